// dagr::ZeroOptimizer — ZeRO stages 1 and 2 (sharded optimizer state) over DDP's flat buckets.
//
//   dagr::DistributedDataParallel ddp(model, comm);
//   dagr::ZeroOptimizer optimizer(ddp, [](std::vector<torch::Tensor> shard) {
//     return std::make_unique<torch::optim::Adam>(shard, torch::optim::AdamOptions(1e-3));
//   }, {.stage = 2});
//   optimizer.zero_grad(); loss.backward(); optimizer.step();   // as with any torch optimizer
//
// Sharding: each of DDP's buckets, n gradient elements of one dtype, is cut
// into N equal blocks of f = ⌊n/N⌋ elements (N ranks); rank r owns block r,
// [r·f, (r+1)·f). The n − N·f < N elements left at the bucket's end (the
// "rest") are owned by every rank: averaged and stepped on each, with the same
// bits everywhere. So each rank owns n/N elements of every bucket, give or
// take N − 1, and holds the optimizer state (SGD's momentum, Adam's moments)
// of only those: 1/N of what the same optimizer holds under plain DDP.
//
// The parameters are moved into flat buffers laid out as the buckets (each
// parameter becomes a view of its bucket's buffer, Tensor::set_data), so the
// tensors the wrapped optimizer steps are, per bucket, this rank's block and
// the rest: views of the parameter buffer, whose gradients are the same
// slices of DDP's gradient bucket (no copies).
//
// step(): the wrapped optimizer on this rank's slices only (with the learning
// rate of this optimizer's param group, so schedules work as usual), then
// every bucket's parameter blocks allgathered in place into every rank's
// parameters.
//   Stage 1: DDP averages the whole gradient as usual (with any comm hook).
//   Stage 2: a comm hook of ZeRO's averages each bucket by a reduce-scatter
//            (and an allreduce of the rest), so each rank gets the average of
//            its own block only: half an allreduce's traffic. The first step,
//            in which DDP may still rebuild its buckets, is averaged whole.
// The wrapped optimizer must update each element from that element's
// gradient and state alone (SGD, Adam, AdamW, ...); it is made by `make` from
// this rank's slices, and made again (its state carried over, collective) if
// DDP's buckets change (once, after the first step, with rebuild_buckets).
// Every rank must call step() after every backward that reduced gradients.
//
// Checkpoints: dense_state() gathers the state into the form one SGD or Adam
// over the whole model has (checkpoint.h's optimizer_state(), which calls it),
// so it loads at any world size, with or without ZeRO; load_dense_state()
// takes this rank's part of such a state.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dagr/train/ddp.h"

namespace dagr {

struct ZeroOptions {
  int stage = 1;  // 1: optimizer state sharded; 2: gradients reduce-scattered as well
};

class ZeroOptimizer : public torch::optim::Optimizer {
 public:
  using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>;

  // Moves the DDP module's trainable parameters into ZeRO's flat buffers; stage 2
  // registers ZeRO's comm hook on `ddp`. `ddp` must outlive the optimizer.
  ZeroOptimizer(DistributedDataParallel& ddp, MakeOptimizer make, ZeroOptions options = {});
  ~ZeroOptimizer() override;

  torch::Tensor step(LossClosure closure = nullptr) override;

  int stage() const;
  // Elements of the parameters this rank updates (its blocks and every rest).
  std::int64_t owned_elements() const;
  // Bytes of per-element optimizer state this rank holds now (the wrapped optimizer's).
  std::size_t state_bytes() const;

  // The optimizer state as one SGD or Adam over the parameters `named` would
  // hold it (keys as checkpoint.h's optimizer_state()); collective over the
  // DDP's communicator. `named` names the DDP module's trainable parameters.
  std::map<std::string, torch::Tensor> dense_state(const torch::OrderedDict<std::string, torch::Tensor>& named);
  // This rank's part of such a state (any world size wrote it); not collective.
  void load_dense_state(const torch::OrderedDict<std::string, torch::Tensor>& named,
                        const std::map<std::string, torch::Tensor>& state);

  struct Impl;

 private:
  explicit ZeroOptimizer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Bytes of per-element state (SGD's momentum buffers, Adam's moments) `optimizer`
// holds now; of a ZeroOptimizer, what this rank holds.
std::size_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer);

}  // namespace dagr
