// dagr::DistributedDataParallel — data-parallel training of any libtorch module.
//
//   auto model = dagr::models::make_model("mlp");   // or any module, holder or shared_ptr
//   dagr::DistributedDataParallel ddp(model, comm);
//   loss.backward();   // gradients are averaged over the ranks when this returns
//   optimizer.step();
//
// At construction the parameters and buffers of rank 0 are broadcast. Every
// parameter's gradient lives in a slice of a flat bucket ("bucket view": the
// optimizer reads the bucket, no copy back). A gradient autograd makes in a
// fresh tensor is copied into its slice when it is ready; dagr::nn::Linear
// writes its gradients straight into theirs (gradient_home.h), so a model of
// those layers copies none (stats().gradients_copied). A tensor registered under several
// names (tied weights) is one parameter, as in PyTorch. Parameters may be float32,
// float64, float16 or bfloat16; a bucket holds one dtype. Buckets are filled
// in reverse order of registration (roughly the order backward produces
// gradients), each dtype's first one small so communication starts early, the
// others up to bucket_cap_bytes; after the first complete step they are
// rebuilt once in the order the gradients actually came (rank 0's order), as
// PyTorch's reducer does. A hook after each parameter's gradient accumulation
// counts down its bucket; a full bucket starts an async allreduce (avg) at
// once, in bucket order on every rank, overlapping the rest of backward. At
// the end of backward (an autograd callback) the remaining buckets are reduced
// and every one is waited for, then (broadcast_buffers) rank 0's buffers are
// broadcast, so loss.backward() returns with averaged gradients and every rank
// holding rank 0's buffers.
//
// How a bucket is averaged is its communication hook (comm_hook.h):
// register_comm_hook(fp16_compress_hook()), powersgd_hook(...), ... before the
// first backward; the default is one allreduce per bucket. The last bucket's
// step-check values (below) ride with that allreduce; with any other hook they
// are averaged in a small float32 allreduce of their own.
//
// Parameters that got no gradient in a step: with find_unused_parameters they
// count as zero; without it backward fails with an error naming them, instead
// of the hang the other ranks would otherwise wait in.
//
// An exception during backward on some rank (user code in a module, a NaN
// check, the error above) gives that step up on every rank: the failing rank
// still takes part in the step's remaining allreduces (with zeros) and marks
// it given up, so every other rank's backward raises too ("another rank
// failed"); no rank must call optimizer.step() after a backward that raised,
// and the next step goes on as usual with the ranks still in agreement. Every
// step's last bucket also carries the step's number: ranks that reduce
// different backward passes (one ran more under no_sync) all raise, and so do all
// their later backwards, as after a failed collective.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>

#include "dagr/comm/communicator.h"
#include "dagr/comm/secure_aggregation.h"
#include "dagr/train/comm_hook.h"

namespace dagr {

struct DdpOptions {
  std::size_t bucket_cap_bytes = 25u << 20;
  std::size_t first_bucket_bytes = 1u << 20;
  bool find_unused_parameters = false;
  // Rank 0's buffers (BatchNorm's running statistics, ...) to every rank at
  // the end of each step's backward, so every rank's next forward starts from them.
  bool broadcast_buffers = true;
  // After the first complete step, rebuild the buckets in the order the
  // gradients actually came (rank 0's), as PyTorch's reducer does.
  bool rebuild_buckets = true;
  // Average the gradients through a SecureAggregator (secure_aggregation.h):
  // no rank, reader of shared memory or network observer sees another rank's
  // gradients, only their average, clipped to ±clip and rounded to its fixed
  // point. float32 parameters only; buckets are reduced one at a time, as they
  // become ready, on the backward thread (no overlap). It installs
  // secure_aggregation_hook() (no other hook can be registered then).
  std::optional<SecureAggregationOptions> secure_aggregation{};
};

struct DdpStats {
  std::int64_t steps = 0;
  std::int64_t buckets_overlapped = 0;  // started while some parameter's gradient was still to come
  double wait_seconds = 0;              // backward blocked on communication (the last bucket, and waits)
  // Gradients autograd made in fresh tensors, which DDP then copied into their
  // buckets; a layer that writes into the bucket itself (dagr::nn::Linear) adds none.
  std::int64_t gradients_copied = 0;
};

class DistributedDataParallel {
 public:
  // The module as torch hands it out: a shared_ptr, a module holder (what
  // TORCH_MODULE makes: `Net net; DistributedDataParallel ddp(net, comm);`),
  // or a module itself. The first two share ownership of the module; a module
  // owned by no shared_ptr (on the stack, a member) must outlive the DDP.
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, Communicator comm,
                          DdpOptions options = {});
  template <class M>
  DistributedDataParallel(const torch::nn::ModuleHolder<M>& holder, Communicator comm, DdpOptions options = {})
      : DistributedDataParallel(std::shared_ptr<torch::nn::Module>(holder.ptr()), std::move(comm), options) {}
  DistributedDataParallel(torch::nn::Module& module, Communicator comm, DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  torch::nn::Module& module() { return *module_; }
  const Communicator& communicator() const { return comm_; }
  int bucket_count() const;
  DdpStats stats() const;

  // Every bucket is averaged through `hook` from the next backward on (as
  // PyTorch's register_comm_hook). Once per DDP, outside backward; InputError
  // otherwise, or with the secure_aggregation option. The hook's state (for
  // checkpoints) stays with the caller's shared_ptr.
  void register_comm_hook(std::shared_ptr<CommHook> hook);
  const CommHook& comm_hook() const;

  // The flat gradient buckets in the order they are reduced, for a sharded
  // optimizer (zero_optimizer.h): `gradients` holds the gradients of
  // `parameters` side by side, in that order, each flattened (the last
  // bucket's step-check values are not in it). Made anew once, after the
  // first complete step, when rebuild_buckets is on.
  struct BucketLayout {
    torch::Tensor gradients;
    std::vector<torch::Tensor> parameters;
  };
  std::vector<BucketLayout> bucket_layout() const;

  // Uneven inputs (PyTorch's Join): a rank that has run out of batches calls
  // join(); until every rank has, it takes part in the others' steps with zero
  // gradients (the average still divides by the world size, as PyTorch's
  // default), their buffer broadcasts and the bucket rebuild. When all have
  // joined, every rank takes the parameters and buffers of a rank that trained
  // the most steps, and join() returns on every rank. Optimizer state is not
  // sent: an early-joined rank's (momentum, Adam moments) is its own last one.
  void join();

  // While the returned guard lives, backward only accumulates gradients locally;
  // the next backward outside it reduces everything accumulated.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& ddp);
    ~NoSync();
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;
   private:
    DistributedDataParallel& ddp_;
  };
  [[nodiscard]] NoSync no_sync() { return NoSync(*this); }

  struct State;  // shared with the autograd hooks

 private:
  std::shared_ptr<torch::nn::Module> module_;
  Communicator comm_;
  std::shared_ptr<State> state_;
};

}  // namespace dagr
