// DDP communication hooks (as PyTorch's register_comm_hook): how each ready
// bucket of gradients is averaged over the ranks.
//
//   dagr::DistributedDataParallel ddp(model, comm);
//   ddp.register_comm_hook(dagr::fp16_compress_hook());        // or bf16_compress_hook(), powersgd_hook({...})
//   loss.backward();   // every bucket went through the hook
//
// DDP calls hook.run(comm, bucket) for each bucket as it becomes ready, in
// bucket order on every rank (while backward goes on; the last bucket, which
// carries DDP's "step finished" check, at the end of backward), and then
// waits for every returned HookWork in the same order: after wait()
// the bucket's buffer must hold the average of the ranks' gradients (or what
// the hook makes of it). Every rank must issue the same collectives in the same
// order: a hook's collectives may depend on the bucket, its own state and
// values that are equal on every rank, never on this rank's gradients alone.
// run() and the continuations of a HookWork run on the thread that runs
// backward; they may start collectives on `comm` (issued in order: first every
// bucket's run(), then each bucket's continuations, bucket by bucket; a bucket
// returned as HookWork::when_waited starts its collectives in its turn there).
//
// Built in: allreduce_hook() (the default: one allreduce, ReduceOp::avg),
// fp16_compress_hook() and bf16_compress_hook() (cast, allreduce in 16 bits
// with float32 accumulation, cast back), powersgd_hook() (powersgd.h) and
// secure_aggregation_hook() (masked fixed point, secure_aggregation.h).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/comm/secure_aggregation.h"
#include "dagr/comm/work.h"

namespace dagr {

// One bucket as a hook sees it: the flat gradients of some parameters, side by side.
struct GradBucket {
  std::size_t index = 0;       // its place in DDP's bucket order (changes once, when the buckets are rebuilt)
  bool last = false;           // the step's last bucket: a hook that counts steps counts them here;
                               // DDP waits for it as soon as backward ends (see HookWork::when_waited)
  // One dtype, contiguous, 1-D: where the average must end up. It starts with
  // the gradients; for a hook with plain_average() or carries_check() it may
  // hold `check` more elements after them (DDP's per-step check), to be
  // averaged as well.
  torch::Tensor buffer;
  std::vector<std::size_t> parameters;            // DDP's indices of the parameters, in buffer order
  std::vector<std::vector<std::int64_t>> shapes;  // each parameter's shape
  // The check's elements at the end of `buffer` (0: none): float32 or float64
  // integers from 0 to kCheckLimit - 1, whose average must come out as exact as
  // a float32 allreduce's (sum, then divide by the world size).
  std::int64_t check = 0;
  static constexpr int kCheckLimit = 4096;

  // The parameters' gradients: views of `buffer`, shaped as the parameters.
  std::vector<torch::Tensor> gradients() const;
};

// A hook's handle (as c10d's Future): a collective in flight and what to do
// once it is done, which may start the next collective; wait() runs the chain
// to its end on the calling thread and rethrows the first error.
class HookWork {
 public:
  HookWork() = default;  // already complete
  // Moved, not copied: two copies waited for would run its continuations,
  // and so start their collectives, twice on this rank only.
  HookWork(HookWork&&) = default;
  HookWork& operator=(HookWork&&) = default;
  HookWork(const HookWork&) = delete;
  HookWork& operator=(const HookWork&) = delete;
  explicit HookWork(Work work) : work_(std::move(work)) {}
  HookWork(Work work, std::function<HookWork()> then) : work_(std::move(work)), then_(std::move(then)) {}
  // Nothing started yet: wait() calls `start` on the waiting thread, then
  // waits for what it returns. The built-in hooks start the step's last
  // bucket (GradBucket::last) this way, with blocking collectives: DDP waits
  // for it as soon as backward ends, so a collective handed to the
  // communication thread would have nothing left to overlap with and would
  // only add two thread switches to the step (about 80 µs on a 2-core VM).
  static HookWork when_waited(std::function<HookWork()> start);
  // Runs the chain to its end; the first error is rethrown, by this wait and
  // by every later one.
  void wait();
  // The collective it waits on first. Waiting on that runs no continuation, so
  // another thread may (the timeline's watcher notes when it completes).
  // Complete (an empty Work) when deferred().
  const Work& collective() const { return work_; }
  // Made by when_waited() and not waited for yet: its collectives start in wait().
  bool deferred() const { return deferred_; }

 private:
  Work work_;
  std::function<HookWork()> then_;
  bool deferred_ = false;
  std::exception_ptr error_;  // what a wait() raised
};

class CommHook {
 public:
  virtual ~CommHook() = default;
  virtual std::string name() const = 0;
  // Starts averaging bucket.buffer over comm's ranks.
  virtual HookWork run(Communicator& comm, GradBucket& bucket) = 0;
  // True when run() is one elementwise average of the whole buffer: DDP then
  // lets its own per-step check values ride at the end of the last bucket
  // instead of reducing them in a collective of their own.
  virtual bool plain_average() const { return false; }
  // True when run() also averages GradBucket::check in its own collectives,
  // so that DDP starts no collective of its own for the check.
  virtual bool carries_check() const { return plain_average(); }
  // The state to keep in a checkpoint, equal on every rank (collective over
  // comm: every rank calls it at the same point), and back on resume.
  virtual std::map<std::string, torch::Tensor> state(Communicator& comm);
  virtual void load_state(const std::map<std::string, torch::Tensor>& state);
};

std::shared_ptr<CommHook> allreduce_hook();
std::shared_ptr<CommHook> fp16_compress_hook();
std::shared_ptr<CommHook> bf16_compress_hook();
// Every bucket (float32 only) through a SecureAggregator over `comm`, made
// here (collective over comm: the ranks exchange keys); run() must be given
// the same group. What DdpOptions::secure_aggregation installs. Synchronous:
// run() returns when the bucket is averaged (no overlap with backward).
std::shared_ptr<CommHook> secure_aggregation_hook(Communicator comm, SecureAggregationOptions options = {});

}  // namespace dagr
