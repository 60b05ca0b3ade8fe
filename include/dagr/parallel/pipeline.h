// Pipeline parallelism: a torch::nn::Sequential cut by layer into P stages,
// one per rank of a pipeline group, run micro-batch by micro-batch by an
// executor that follows a schedule's action list (dagr/parallel/pipeline_schedule.h).
//
//   auto groups = dagr::make_pipeline_groups(world, P);          // P × D ranks
//   auto model  = dagr::models::make_model("deep-mlp", 1024);    // same seed on every rank
//   auto bounds = dagr::partition_by_parameters(model, P);
//   auto stage  = dagr::make_stage(model, bounds[groups.pipeline.rank()]);
//   dagr::PipelineExecutor run(stage, groups.pipeline,
//                              dagr::make_schedule(dagr::ScheduleKind::one_f_one_b, P, M));
//   run.step(micro_batches, [&](int i, const torch::Tensor& out) { return loss_of(i, out); });
//   dagr::average_gradients(*stage, groups.data);                // DP over each stage's data group
//   optimizer.step();
//
// Activations go from stage s to s+1 and their gradients back with the
// communicator's send/recv (shared memory on one host, MPI across hosts),
// tagged per micro-batch: each transfer is a small header (rank and sizes)
// and the float32 data. Sends are asynchronous (a stage never waits for its
// neighbour to take an activation); receives block when the schedule says.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/parallel/pipeline_schedule.h"

namespace dagr {

// Modules [begin, end) of a Sequential.
struct StageBounds {
  int begin = 0, end = 0;
};

// Cuts `costs` (one per layer, in order) into `stages` non-empty consecutive
// runs that minimise the largest run's sum (ties: the earliest cut).
// InputError when there are fewer layers than stages.
std::vector<StageBounds> partition_by_cost(const std::vector<double>& costs, int stages);
// Costs = parameter counts; a layer without parameters (ReLU, Flatten, pooling)
// counts as one parameter, so that it is kept next to its neighbours but a
// stage is never empty.
std::vector<StageBounds> partition_by_parameters(const torch::nn::Sequential& model, int stages);
// Costs = measured seconds of a forward and backward of each layer on `sample`
// (median of `repeats`), for models whose layers differ in compute per parameter (the CNN).
std::vector<StageBounds> partition_by_time(const torch::nn::Sequential& model, const torch::Tensor& sample,
                                           int stages, int repeats = 5);

// A Sequential of the same module objects (shared, not copied): training the
// stage trains those layers of `model`.
torch::nn::Sequential make_stage(const torch::nn::Sequential& model, StageBounds bounds);

// World rank r is tensor rank t = r mod T of stage s = (r / T) mod P of
// pipeline d = r / (T·P): the T ranks of a stage are neighbours (they talk
// most), consecutive stages follow, and each pipeline shares a batch. The
// pipeline group links the stages of one pipeline with the same t; the tensor
// group splits a stage's layers (dagr/parallel/tensor_parallel_stage.h); the
// data group joins the ranks with the same s and t, which average that part's
// gradients. With T = 1 (no tensor parallelism) rank r is stage r mod P.
// Collective over `world`; InputError when P·T does not divide the world size.
struct PipelineGroups {
  Communicator pipeline;  // size P, rank = stage
  Communicator data;      // size world / (P·T)
  Communicator tensor;    // size T
};
PipelineGroups make_pipeline_groups(Communicator& world, int stages, int tensor = 1);

struct PipelineStepStats {
  int peak_in_flight = 0;         // most micro-batches forwarded and not yet backwarded, at once
  double compute_seconds = 0;     // in forward and backward actions (the loss included)
  double recv_seconds = 0;        // in receive actions: waiting for the message and copying it in
  double send_seconds = 0;        // posting sends, and waiting for them at the step's end
  double wall_seconds = 0;        // the whole step, transfers and waits included
  // With measure_memory: the most heap memory (glibc mallinfo2, the whole
  // process) held at once by in-flight micro-batches, each counted as the
  // growth of the heap across its forward (what autograd keeps for backward,
  // and the output). 0 otherwise.
  std::int64_t peak_activation_bytes = 0;
  std::vector<torch::Tensor> outputs;  // last stage: each micro-batch's output, detached
  double loss = 0;                     // last stage: the sum of the losses returned
};

class PipelineExecutor {
 public:
  // `stage` is this rank's part of the model; `pipeline`'s rank is its stage
  // index and its size the schedule's stage count (InputError otherwise).
  // The schedule is simulated here: one that cannot run is an Error now, not a hang.
  PipelineExecutor(torch::nn::Sequential stage, Communicator pipeline, PipelineSchedule schedule,
                   bool measure_memory = false);

  // The loss of micro-batch i from the last stage's output; its gradient is
  // what backward propagates, so scale it (e.g. by the micro-batch's share of
  // the batch) for the gradients of the whole batch to be a sum over micro-batches.
  using LossFn = std::function<torch::Tensor(int micro_batch, const torch::Tensor& output)>;
  // One step: runs this rank's actions. The first stage reads `inputs` (one
  // tensor per micro-batch; ignored elsewhere), the last stage calls `loss`.
  // Gradients accumulate into the stage's parameters (zero them before).
  PipelineStepStats step(const std::vector<torch::Tensor>& inputs, const LossFn& loss);

  // Forward only, without autograd (evaluation, inference): the first stage
  // feeds `input`, the last returns the model's output; other stages return an
  // undefined tensor. Collective over the pipeline.
  torch::Tensor forward(const torch::Tensor& input);

  const PipelineSchedule& schedule() const { return schedule_; }
  const SimulationReport& simulation() const { return simulation_; }
  torch::nn::Sequential& stage() { return stage_; }

 private:
  void send_tensor(const torch::Tensor& t, int peer, int tag);
  torch::Tensor recv_tensor(int peer, int tag);
  void wait_sends();

  torch::nn::Sequential stage_;
  Communicator pipeline_;
  PipelineSchedule schedule_;
  SimulationReport simulation_;
  bool measure_memory_;
  struct PendingSend {
    Work work;
    torch::Tensor keep;  // the buffer the send reads, alive until it is done
  };
  std::vector<PendingSend> pending_;
};

// Averages each parameter's gradient over `data` in one flat allreduce (a
// no-op for a group of one). Every rank of the group holds the same layers.
void average_gradients(torch::nn::Module& stage, Communicator& data);

// The whole model on the pipeline's rank 0: every other stage sends the
// parameters and buffers of its layers (`bounds[s]` of `model`) and rank 0
// copies them into its `model`. Collective over the pipeline group; the
// other ranks' `model` is left as it is.
void gather_stages(torch::nn::Sequential& model, const std::vector<StageBounds>& bounds, Communicator& pipeline);

}  // namespace dagr
