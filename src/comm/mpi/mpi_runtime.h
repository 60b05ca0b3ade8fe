// MPI, initialised once, with every MPI call serialised.
//
// dagr's calls come from several threads (the caller of a blocking call, and
// the background threads of async collectives, sends and receives). Instead of
// handing each call to one progress thread — a cross-thread wake-up costs
// ~50 µs in this VM, as long as a whole 1 MiB allreduce — every waiting thread
// drives progress itself: under one lock it posts its non-blocking MPI
// operation and then polls *all* operations in flight, until its own is done.
// MPI thus sees one thread at a time (MPI_THREAD_SERIALIZED, checked), and
// sends, receives and collectives progress together.
//
// MPI is initialised by the first use and finalised at exit, unless the program
// had already initialised it (then dagr leaves both to the program).
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

  // Calls `step` (under the MPI lock, with every other operation in flight)
  // until it returns true; rethrows its error. TimeoutError at `deadline`: the
  // step stays in flight (an MPI operation cannot be cancelled).
  void run(std::function<bool()> step, Clock::time_point deadline, const std::function<std::string()>& what);
  // Runs `fn` once under the MPI lock (setup calls: split, dup, free).
  void call(const std::function<void()>& fn);

  MPI_Op user_op(DType dtype, ReduceOp op);  // for float16/bfloat16; call under the lock

 private:
  MpiRuntime();
  struct Task;
  void poll_locked();  // steps every task in flight once

  std::mutex mpi_mutex_;  // held around every MPI call
  std::vector<std::shared_ptr<Task>> in_flight_;
  bool initialised_here_ = false;
};

}  // namespace dagr::detail
