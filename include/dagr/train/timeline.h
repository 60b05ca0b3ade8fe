// dagr::timeline — what each rank did when, as one Chrome-trace JSON file for
// the whole job (opens in https://ui.perfetto.dev and chrome://tracing).
//
//   dagr::timeline::start(comm);                      // every rank (collective)
//   DistributedDataParallel ddp(model, comm);
//   for (...) {
//     dagr::timeline::Span step("step");
//     { dagr::timeline::Span s("forward");  loss = ...; }
//     { dagr::timeline::Span s("backward"); loss.backward(); }
//     { dagr::timeline::Span s("optimizer step"); optimizer.step(); }
//   }
//   dagr::timeline::finish(comm, "timeline.json");    // every rank (collective); rank 0 writes
//
// In the file each rank is a process (pid = its rank in the communicator given
// to start(), named "rank R"), with two tracks: "training" (tid 0: the spans
// of the thread that called start(), which runs backward and DDP's waits) and
// "communication" (tid 1: one span per DDP bucket per step, args: bytes (the
// bucket's), bucket index, step, algorithm (the comm hook's name), group).
// Other threads that open spans get tracks of their own (tid 2, 3, …). Flow
// arrows ("s"/"f" events, one id per pair) join the spans of one collective
// (same DDP group, step and bucket) across the ranks of the group.
//
// DDP records by itself (DdpTrace), if recording began before it was made:
// each bucket's communication; on the training thread each comm hook's run()
// ("comm hook run") and the time backward was blocked at its end waiting for
// the buckets ("wait for communication"). A bucket's span on the
// communication track runs from when its first collective could start (its
// hook issued it and the bucket before it was done: the communication thread
// runs calls in issue order) until a watcher thread saw that collective
// complete (or, when it woke late, until a later bucket or the step was seen
// done). A synchronous hook (secure aggregation) does everything in run():
// its span is that run(). Only a HookWork's first collective is watched:
// collectives a hook issues later, from its continuations (PowerSGD's second
// allreduce), run inside the training thread's wait and are not drawn
// separately, and a bucket whose first Work is already complete though its
// collective is not (PowerSGD on a bucket without 1-D tensors) is drawn from
// the end of the bucket before it to the end of its run(), often with no length; neither are the collectives of
// steps shadowed by join() or given up after an exception. Forward, backward
// and the optimizer step are the program's own: Spans around them
// (`dagr train` records "step", "forward", "backward", "optimizer step").
//
// Cost: while recording is off, a Span or a DDP probe is one relaxed atomic
// load and a branch. While on, a span is two clock reads and an append under
// a mutex; each asynchronous bucket is also watched by a background thread
// that notes when it completes. Memory is bounded: each rank keeps at most
// Options::max_events spans (later ones are counted, not kept; the file says
// how many were dropped).
//
// Clock: std::chrono::steady_clock (CLOCK_MONOTONIC). start() ends with a
// barrier after which every rank notes its clock. When all ranks are on one
// host the merged file uses the raw clock (one clock for every process) with
// its origin at that barrier; when they are on several hosts (MPI), each
// rank's times are shifted so that its barrier moment coincides with rank 0's,
// which aligns the hosts to within the barrier's exit skew (about one network
// latency).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dagr/comm/communicator.h"

namespace dagr::timeline {

struct Options {
  std::size_t max_events = 200000;  // spans kept per rank (about 100 bytes each in the file)
};

namespace detail {
inline std::atomic<bool> recording{false};
}

// Whether this process is recording (one relaxed load).
inline bool enabled() noexcept { return detail::recording.load(std::memory_order_relaxed); }

// Starts recording in this process; collective over `comm` (a barrier that
// sets the common clock origin). This rank is pid comm.rank() in the file.
// InputError when already recording.
void start(Communicator& comm, Options options = {});

// Stops recording and merges: collective over `comm` (the group that called
// start(), or the survivors of it after Communicator::shrink). Every rank
// sends its spans to rank 0, which writes the merged trace to `path`
// (atomically: path.tmp, then renamed). Error when rank 0 cannot write it.
void finish(Communicator& comm, const std::string& path);

// A span on the calling thread from construction to destruction. `name`
// must outlive the recording (a string literal).
class Span {
 public:
  explicit Span(const char* name) noexcept : name_(name) {
    if (enabled()) start_ = std::chrono::steady_clock::now();
  }
  ~Span();
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point start_{};  // epoch: not recording when constructed
};

// What DDP records (src/train/ddp.cc calls it only when enabled()): each
// step's buckets on the communication track, the communication hook's run()
// and the training thread's wait at the end of backward.
class DdpTrace {
 public:
  using Clock = std::chrono::steady_clock;
  DdpTrace();
  ~DdpTrace();
  DdpTrace(const DdpTrace&) = delete;
  DdpTrace& operator=(const DdpTrace&) = delete;

  // Collective over the DDP's group (at its construction): its ranks learn
  // each other's pids, which name the group in the file (for the flow arrows).
  void join(Communicator& group);
  // The hook's run() for bucket `bucket` (`bytes` long) of step `step` (DDP's
  // count, the same on every rank) went from `since` until now; `work` is the
  // first collective it started (complete already when run() did it all).
  // `deferred`: run() started nothing, its collectives run in the wait at the
  // step's end (HookWork::when_waited; the last bucket).
  void started(std::int64_t step, int bucket, std::size_t bytes, const std::string& algorithm,
               Clock::time_point since, Work work, bool deferred = false);
  // Every bucket of `step` is done; this thread waited for them from `since` until now.
  void end_step(std::int64_t step, Clock::time_point since);

  struct Watcher;  // the background thread that notes when buckets complete

 private:
  const std::string* group_;  // the group's pids, "0,1,2" (interned); "" before join()
  std::unique_ptr<Watcher> watcher_;  // made on the first started()
};

}  // namespace dagr::timeline
