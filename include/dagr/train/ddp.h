// dagr::DistributedDataParallel — data-parallel training of any libtorch module.
//
//   auto model = dagr::models::make_model("mlp");
//   dagr::DistributedDataParallel ddp(model.ptr(), comm);
//   loss.backward();   // gradients are averaged over the ranks when this returns
//   optimizer.step();
//
// At construction the parameters and buffers of rank 0 are broadcast. Every
// parameter's gradient lives in a slice of a flat bucket ("bucket view": the
// optimizer reads the bucket, no copy back). Buckets are filled in reverse
// order of registration (roughly the order backward produces gradients), the
// first one small so communication starts early, the others up to
// bucket_cap_bytes. A hook after each parameter's gradient accumulation counts
// down its bucket; a full bucket starts an async allreduce (avg) at once, in
// bucket order on every rank, overlapping the rest of backward. At the end of
// backward (an autograd callback) the remaining buckets are reduced and every
// one is waited for, so loss.backward() returns with averaged gradients.
//
// Parameters that got no gradient in a step: with find_unused_parameters they
// count as zero; without it backward fails with an error naming them, instead
// of the hang the other ranks would otherwise wait in.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "dagr/comm/communicator.h"

namespace dagr {

struct DdpOptions {
  std::size_t bucket_cap_bytes = 25u << 20;
  std::size_t first_bucket_bytes = 1u << 20;
  bool find_unused_parameters = false;
};

struct DdpStats {
  std::int64_t steps = 0;
  std::int64_t buckets_overlapped = 0;  // started before backward ended
  double wait_seconds = 0;              // backward blocked on communication (the last bucket, and waits)
};

class DistributedDataParallel {
 public:
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, Communicator comm,
                          DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  torch::nn::Module& module() { return *module_; }
  const Communicator& communicator() const { return comm_; }
  int bucket_count() const;
  DdpStats stats() const;

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
