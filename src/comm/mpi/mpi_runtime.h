// MPI, initialised once, with every MPI call serialised and every wait bounded.
//
// dagr's calls come from several threads (the caller of a blocking call, and
// the background threads of async collectives, sends and receives; in
// tensor × data parallel training, two communicators at once). No MPI call
// that waits on another rank is ever made under the lock: every operation is
// posted non-blocking, and each waiting thread drives progress itself — it
// takes the lock, steps *all* operations in flight once (MPI_Test), releases
// the lock, checks its deadline, and goes again. So one thread waiting on a
// slow group never stops another thread's group from progressing, and a wait
// ends at its deadline. (Handing calls to one progress thread instead costs a
// cross-thread wake-up, ~50 µs in this VM, as long as a whole 1 MiB allreduce.)
// MPI thus sees one thread at a time (MPI_THREAD_SERIALIZED, checked).
//
// Failure is final. An operation that timed out cannot be cancelled (MPI has no
// cancel for collectives) and would still write into its buffers whenever MPI
// progresses; an MPI call that returned an error leaves MPI in an undefined
// state. So the first timeout or MPI error marks the runtime failed: from then
// on no MPI call is made at all (every later call raises Error naming the first
// failure), the abandoned operations keep their own buffers, and at exit MPI is
// not finalised — MPI_Finalize would wait for the silent peer; the process ends
// with its own status and mpirun, seeing a rank end without finalising, stops
// the job.
//
// MPI is initialised by the first use and finalised at exit after a healthy
// run, unless the program had already initialised it (then dagr leaves both
// to the program).
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "request.h"

namespace dagr::detail {

// Throws Error("<what>: <MPI's error text>") unless rc is MPI_SUCCESS.
void check_mpi(int rc, const char* what);

class MpiRuntime {
 public:
  // The process's runtime (the RAII scope of MPI), made on first use.
  static std::shared_ptr<MpiRuntime> get();
  ~MpiRuntime();

  // Calls `step` under the MPI lock, beside every other operation in flight,
  // until it returns true; rethrows its error. `step` posts its non-blocking
  // operation on the first call and tests it on later ones; it must own (by
  // value or shared_ptr) everything MPI touches except the caller's own
  // buffers, since after a timeout it outlives this call. TimeoutError at
  // `deadline`, and the runtime is failed (see above).
  void run(std::function<bool()> step, Clock::time_point deadline, const std::function<std::string()>& what);
  // Runs `fn` once under the MPI lock: calls that wait on no other rank (free,
  // attributes), or a split once every member has met (MpiBackend::split).
  // Error without calling `fn` once the runtime has failed.
  void call(const std::function<void()>& fn);

  MPI_Op user_op(DType dtype, ReduceOp op);  // for float16/bfloat16; call under the lock

 private:
  MpiRuntime();
  struct Task;
  void poll_locked();                            // steps every task in flight once
  void throw_if_failed_locked() const;           // Error naming the first failure
  void fail_locked(const std::string& failure);  // the first failure wins

  std::mutex mpi_mutex_;  // held around every MPI call
  std::vector<std::shared_ptr<Task>> in_flight_;
  std::string failure_;  // empty while healthy
  bool initialised_here_ = false;
};

}  // namespace dagr::detail
