// Tensor parallelism inside a pipeline stage: a Sequential (a stage cut by
// dagr/parallel/pipeline.h, or a whole model) whose Linear → ReLU → Linear
// runs are split over a tensor group the way Megatron splits its MLP blocks:
//
//   Linear(a→b), ReLU, Linear(b→c)   becomes
//   ColumnParallelLinear(a→b, output left sharded), ReLU, RowParallelLinear(b→c, input sharded)
//
// Rank i holds b/T of the hidden features: the first layer's rows and the
// second's columns. The ReLU works on the shard as it is; one allreduce joins
// the run's output forward (and one its input gradient backward). Runs are
// taken greedily from the stage's start; any other layer (Flatten, a Linear
// left without a partner, a convolution) stays whole and is computed by every
// rank of the group on the same input. So the group's ranks enter a stage with
// the same activation and leave it with the same activation: a pipeline of
// tensor groups sends each rank's copy to the same tensor rank of the next
// stage, and nothing else about the pipeline changes.
//
//   auto stage = dagr::make_stage(model, bounds[s]);
//   dagr::TensorParallelStage split(stage, groups.tensor);   // the dense stage's weights, sharded
//   dagr::PipelineExecutor run(split.module(), groups.pipeline, schedule);
//   …
//   split.gather_into(stage);   // collective: the dense stage again, e.g. for a checkpoint
#pragma once

#include <torch/torch.h>

#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/parallel/pipeline.h"

namespace dagr {

// The hidden width of each Linear → ReLU → Linear run that TensorParallelStage
// would split in `dense`, in order (none: nothing to split).
std::vector<std::int64_t> splittable_widths(const torch::nn::Sequential& dense);
// InputError when the stages `bounds` cut from `model` hold no run to split
// (the 2-layer mlp's layers always fall in different stages), or a run
// narrower than `tensor` ranks.
void check_tensor_split(const torch::nn::Sequential& model, const std::vector<StageBounds>& bounds, int tensor);

class TensorParallelStage {
 public:
  // Takes `dense`'s weights as they are (every rank of `group` passes the same
  // ones). Layers that stay whole are the same module objects as in `dense`.
  // InputError when a run's hidden width is smaller than the group.
  TensorParallelStage(const torch::nn::Sequential& dense, Communicator group);

  torch::nn::Sequential module() const { return module_; }

  // Tensors shaped like module()->parameters() (the parameters themselves, or
  // optimizer moments), in its order, as dense tensors shaped like the dense
  // stage's parameters (collective over the group); and back (local).
  std::vector<torch::Tensor> gather(const std::vector<torch::Tensor>& shards);
  std::vector<torch::Tensor> shard(const std::vector<torch::Tensor>& dense) const;
  // Copies the gathered parameters into `dense` (the Sequential this was made
  // from, or one of the same shapes). Collective over the group.
  void gather_into(torch::nn::Sequential& dense);

 private:
  // How parameter i of module() relates to the dense one: whole (the same on
  // every rank), or this rank's shard_of(total, T, rank) along `dim`.
  struct Split {
    int dim = -1;  // -1: whole
    std::int64_t total = 0;
  };
  torch::nn::Sequential module_;
  Communicator group_;
  std::vector<Split> splits_;
};

}  // namespace dagr
