// One rank of `dagr infer`: load the dense checkpoint, keep this rank's shards,
// and answer the test set batch by batch. Data group d takes batches d, d+D, …;
// the ranks of a tensor group compute each of their batches together.
// With --pipeline-parallel P the ranks of a pipeline hold consecutive stages
// instead, and each of the pipeline's batches flows through them (below).
#include "inference.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/parallel/pipeline.h"
#include "dagr/parallel/tensor_parallel_stage.h"
#include "dagr/train/accuracy.h"
#include "dagr/train/compute_threads.h"
#include "network.h"

namespace dagr::train {
namespace {

using Clock = std::chrono::steady_clock;

// Median and 90th percentile of `ms` (0 when empty).
std::pair<double, double> median_p90(std::vector<double> ms) {
  if (ms.empty()) return {0, 0};
  std::sort(ms.begin(), ms.end());
  const auto at = [&](double q) { return ms[static_cast<std::size_t>(q * static_cast<double>(ms.size() - 1))]; };
  return {at(0.5), at(0.9)};
}

// --pipeline-parallel P (and --tensor-parallel T): the P × T × D layout of
// training (dagr::make_pipeline_groups); every rank loads the dense checkpoint
// and keeps its stage's layers, cut by parameter count, and with T > 1 splits
// their Linear → ReLU → Linear runs over its tensor group. Pipeline d takes batches d, d + D, …, each
// one micro-batch through PipelineExecutor::forward: a stage receives it,
// computes its layers and sends the result on asynchronously, then takes its
// next batch, so that stage s computes batch k + D while stage s + 1 computes
// batch k. The send is done before the stage's next forward starts (the
// message waits in the pair's ring buffer), so a stage runs at most one batch
// ahead of the next. The last stage counts correct predictions and notes the
// time between its outputs.
int run_pipeline_inference(const InferOptions& o, Communicator& world, const data::ImageSet& test) {
  const int P = o.pipeline_parallel;
  PipelineGroups groups = make_pipeline_groups(world, P, o.tensor_parallel);
  const int s = groups.pipeline.rank(), D = groups.data.size(), T = groups.tensor.size();
  const bool first = s == 0, last = s == P - 1;
  auto model = load_dense_model(o.model, o.depth, o.checkpoint);
  model->eval();
  const auto bounds = partition_by_parameters(model, P);
  auto stage = make_stage(model, bounds[static_cast<std::size_t>(s)]);
  if (T > 1) {
    check_tensor_split(model, bounds, T);
    stage = TensorParallelStage(stage, groups.tensor).module();
  }
  PipelineExecutor exec(stage, groups.pipeline, make_schedule(ScheduleKind::gpipe, P, 1));
  const std::int64_t n = test.images.size(0);
  const std::int64_t batches = (n + o.batch_size - 1) / o.batch_size;
  std::vector<double> intervals_ms;
  std::int64_t counts[2] = {0, 0};
  world.barrier();
  const auto start = Clock::now();
  auto previous = start;
  for (std::int64_t k = groups.data.rank(); k < batches; k += D) {
    const std::int64_t begin = k * o.batch_size, len = std::min(o.batch_size, n - begin);
    const auto out = exec.forward(first ? test.images.narrow(0, begin, len) : torch::Tensor());
    if (!last || groups.tensor.rank() != 0) continue;  // a tensor group's ranks hold the same output
    const auto now = Clock::now();
    intervals_ms.push_back(std::chrono::duration<double, std::milli>(now - previous).count());
    previous = now;
    counts[0] += correct_predictions(out, test.labels.narrow(0, begin, len));
    counts[1] += len;
  }
  world.barrier();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  world.allreduce(std::span<std::int64_t>(counts, 2));
  // The first pipeline's last stage (world rank (P − 1)·T) tells rank 0 its intervals' median and p90.
  const auto [median, p90] = median_p90(world.rank() == (P - 1) * T ? intervals_ms : std::vector<double>());
  double figures[2] = {median, p90};
  world.allreduce(std::span<double>(figures, 2), ReduceOp::max);
  if (world.rank() == 0) {
    std::printf("dagr infer: %s from %s on %d workers (pipeline-parallel %d × tensor-parallel %d × data-parallel %d)\n",
                o.model.c_str(), o.checkpoint.c_str(), world.size(), P, T, D);
    for (int k = 0; k < P; ++k)
      std::printf("dagr infer: stage %d: layers %d..%d\n", k, bounds[static_cast<std::size_t>(k)].begin,
                  bounds[static_cast<std::size_t>(k)].end - 1);
    std::printf("accuracy %.4f (%lld of %lld test images)\n", static_cast<double>(counts[0]) / counts[1],
                static_cast<long long>(counts[0]), static_cast<long long>(counts[1]));
    std::printf("throughput %.0f images/s; a batch of %lld leaves the last stage every %.3f ms (median), p90 %.3f ms\n",
                counts[1] / seconds, static_cast<long long>(o.batch_size), figures[0], figures[1]);
  }
  return 0;
}

}  // namespace

void check_inference_options(const InferOptions& o) {
  DAGR_ENFORCE(o.batch_size >= 1, InputError, "--batch-size must be at least 1");
  DAGR_ENFORCE(o.depth == models::kDefaultDepth || o.model == "deep-mlp", InputError, "--depth ", o.depth,
               " is the deep-mlp's (the ", o.model, " has a fixed depth)");
  DAGR_ENFORCE(o.pipeline_parallel >= 1, InputError, "--pipeline-parallel must be at least 1, not ",
               o.pipeline_parallel);
  const int layers = static_cast<int>(models::make_model(o.model, 1, o.depth)->size());
  DAGR_ENFORCE(o.pipeline_parallel <= layers, InputError, "--pipeline-parallel ", o.pipeline_parallel, ": the ",
               o.model, " has only ", layers, " layers to cut into stages");
  if (o.pipeline_parallel > 1 && o.tensor_parallel > 1) {  // on the checkpoint's own cut, as the ranks will cut it
    auto model = load_dense_model(o.model, o.depth, o.checkpoint);
    check_tensor_split(model, partition_by_parameters(model, o.pipeline_parallel), o.tensor_parallel);
  }
}

int run_inference(const InferOptions& o) {
  check_inference_options(o);
  set_compute_threads(o.threads);
  Communicator world = Communicator::from_env();
  if (o.pipeline_parallel > 1) {
    const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
    return run_pipeline_inference(o, world, test);
  }
  const ParallelGroups groups = make_parallel_groups(world, o.tensor_parallel);
  Network net = load_network(o.model, o.depth, o.checkpoint, groups);
  net.module->eval();
  const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
  torch::NoGradGuard no_grad;

  const std::int64_t n = test.images.size(0);
  const std::int64_t batches = (n + o.batch_size - 1) / o.batch_size;
  std::vector<double> latencies_ms;
  std::int64_t counts[2] = {0, 0};
  world.barrier();
  const auto start = Clock::now();
  for (std::int64_t k = groups.data.rank(); k < batches; k += groups.data.size()) {
    const std::int64_t begin = k * o.batch_size, len = std::min(o.batch_size, n - begin);
    const auto t0 = Clock::now();
    const auto predicted = net.forward(test.images.narrow(0, begin, len)).argmax(1);
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (groups.tensor.rank() == 0) {
      counts[0] += predicted.eq(test.labels.narrow(0, begin, len)).sum().item<std::int64_t>();
      counts[1] += len;
    }
  }
  world.barrier();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  world.allreduce(std::span<std::int64_t>(counts, 2));
  if (world.rank() == 0) {
    const auto [median, p90] = median_p90(latencies_ms);
    std::printf("dagr infer: %s from %s on %d workers (tensor-parallel %d × data-parallel %d)\n", o.model.c_str(),
                o.checkpoint.c_str(), world.size(), groups.tensor.size(), groups.data.size());
    std::printf("accuracy %.4f (%lld of %lld test images)\n", static_cast<double>(counts[0]) / counts[1],
                static_cast<long long>(counts[0]), static_cast<long long>(counts[1]));
    std::printf("throughput %.0f images/s; latency per batch of %lld: median %.3f ms, p90 %.3f ms\n", counts[1] / seconds,
                static_cast<long long>(o.batch_size), median, p90);
  }
  return 0;
}

}  // namespace dagr::train
