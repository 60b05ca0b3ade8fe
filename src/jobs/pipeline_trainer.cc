// One rank of `dagr train --pipeline-parallel P` (dagr/parallel/pipeline.h):
//   join the group → P × T × D layout (dagr::make_pipeline_groups) → build
//   the whole model from the seed (the same on every rank), keep this stage's
//   layers, and with --tensor-parallel T split their Linear → ReLU → Linear
//   runs over the stage's tensor group (dagr/parallel/tensor_parallel_stage.h) →
//   each step: the pipeline's batch (its data rank's shard of the epoch) cut
//   into M micro-batches; the first stage feeds the images, the last computes
//   the loss of each micro-batch (its share of the batch's mean) → the
//   schedule's actions → gradients averaged over the stage's data group →
//   optimizer step → after each epoch, test accuracy through the pipeline
//   (forward only) → the split stages gather their shards over their tensor
//   groups, the pipeline's rank 0 gathers the stages into the dense model and
//   saves it (model.pt loads in `dagr infer` at any layout).
// Training-state checkpoints (dagr/train/checkpoint.h) every --checkpoint-every
// steps and after every epoch are dense too: the first pipeline's stages
// (tensor rank 0, after the gather) send their layers and their optimizer
// state to world rank 0, which writes them under the dense model's names, so
// that --resume continues from them at any layout (this one, another P or T,
// or plain `dagr train`) and so does plain `dagr train --resume` with the
// checkpoint of a pipeline. Restarts and elastic recovery are not here
// (check_pipeline_options refuses them).
#include "pipeline_trainer.h"

#include <malloc.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>

#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/launch/standby.h"
#include "dagr/models/models.h"
#include "dagr/parallel/pipeline.h"
#include "dagr/parallel/tensor_parallel_stage.h"
#include "dagr/train/accuracy.h"
#include "dagr/train/checkpoint.h"
#include "dagr/train/compute_threads.h"
#include "dagr/train/fused_optimizers.h"
#include "dagr/train/sampler.h"

namespace dagr::train {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o, torch::nn::Module& m) {
  if (o.optimizer == "sgd")
    return std::make_unique<FusedSgd>(m.parameters(), torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  return std::make_unique<FusedAdam>(m.parameters(), torch::optim::AdamOptions(o.lr));
}

// The learning rate at `step` of `total` (as dagr train's: cosine decay to zero, or constant).
void set_learning_rate(torch::optim::Optimizer& optimizer, const TrainOptions& o, std::int64_t step,
                       std::int64_t total) {
  if (o.schedule == "constant") return;
  const double lr = o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// The stage bounds: by parameter count, or (--pipeline-balance time) by the
// layers' forward+backward time measured on pipeline rank 0 and sent to all,
// so that every rank cuts the model at the same places.
std::vector<StageBounds> choose_bounds(const TrainOptions& o, torch::nn::Sequential& model, Communicator& world,
                                       const torch::Tensor& sample) {
  const int P = o.pipeline_parallel;
  if (o.pipeline_balance == "parameters") return partition_by_parameters(model, P);
  std::vector<std::int64_t> flat(static_cast<std::size_t>(2 * P));
  if (world.rank() == 0) {
    const auto bounds = partition_by_time(model, sample, P);
    for (int s = 0; s < P; ++s) {
      flat[static_cast<std::size_t>(2 * s)] = bounds[static_cast<std::size_t>(s)].begin;
      flat[static_cast<std::size_t>(2 * s + 1)] = bounds[static_cast<std::size_t>(s)].end;
    }
  }
  world.broadcast(std::span<std::int64_t>(flat), 0);
  std::vector<StageBounds> bounds;
  for (int s = 0; s < P; ++s)
    bounds.push_back({static_cast<int>(flat[static_cast<std::size_t>(2 * s)]),
                      static_cast<int>(flat[static_cast<std::size_t>(2 * s + 1)])});
  return bounds;
}

std::int64_t parameter_count(const torch::nn::Module& m) {
  std::int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// Test accuracy through the pipeline: pipeline d takes every D-th sample, in
// chunks of 1000; the last stage counts; counts summed over the world.
double evaluate_pipeline(PipelineExecutor& exec, const torch::Tensor& images, const torch::Tensor& labels,
                         const PipelineGroups& groups, Communicator& world) {
  exec.stage()->eval();
  const auto idx = torch::arange(groups.data.rank(), images.size(0), groups.data.size());
  const bool last = groups.pipeline.rank() == groups.pipeline.size() - 1;
  std::int64_t counts[2] = {0, 0};
  for (std::int64_t i = 0; i < idx.numel(); i += 1000) {
    const auto part = idx.narrow(0, i, std::min<std::int64_t>(1000, idx.numel() - i));
    const auto out = exec.forward(groups.pipeline.rank() == 0 ? images.index_select(0, part) : torch::Tensor());
    if (last && groups.tensor.rank() == 0) {  // a tensor group's ranks all hold the same output
      counts[0] += correct_predictions(out, labels.index_select(0, part));
      counts[1] += part.numel();
    }
  }
  exec.stage()->train();
  world.allreduce(std::span<std::int64_t>(counts, 2));
  return static_cast<double>(counts[0]) / static_cast<double>(counts[1]);
}

// The parameters of layers [b.begin, b.end) under the dense model's names
// ("<layer>.<parameter>"): the names a dense checkpoint's optimizer state uses.
torch::OrderedDict<std::string, torch::Tensor> stage_parameters(const torch::nn::Sequential& model, StageBounds b) {
  torch::OrderedDict<std::string, torch::Tensor> named;
  const auto layers = model->named_children();
  for (int i = b.begin; i < b.end; ++i)
    for (const auto& p : layers[static_cast<std::size_t>(i)].value()->named_parameters())
      named.insert(layers[static_cast<std::size_t>(i)].key() + "." + p.key(), p.value());
  return named;
}

// The parameters the optimizer holds (the split stage's, with --tensor-parallel)
// under the dense model's names of layers [b.begin, b.end).
torch::OrderedDict<std::string, torch::Tensor> trained_parameters(const torch::nn::Sequential& model, StageBounds b,
                                                                  const std::optional<TensorParallelStage>& split) {
  auto named = stage_parameters(model, b);
  if (!split) return named;
  const auto shards = split->module()->parameters();
  DAGR_ENFORCE(shards.size() == named.size(), Error, "the split stage has ", shards.size(), " parameters, not ",
               named.size());
  torch::OrderedDict<std::string, torch::Tensor> mapped;
  for (std::size_t i = 0; i < shards.size(); ++i) mapped.insert(named[i].key(), shards[i]);
  return mapped;
}

// This stage's optimizer state under the dense names, dense-shaped: a split
// stage's moments are gathered over its tensor group (collective there).
std::map<std::string, torch::Tensor> stage_optimizer_state(torch::optim::Optimizer& optimizer,
                                                           const torch::nn::Sequential& model, StageBounds b,
                                                           std::optional<TensorParallelStage>& split) {
  const auto named = trained_parameters(model, b, split);
  auto state = optimizer_state(optimizer, named);
  if (split) map_per_element_state(state, named, [&](const auto& shards) { return split->gather(shards); });
  return state;
}

// The dense checkpoint's model and optimizer state on the pipeline's rank 0
// (collective over the pipeline): gather_stages copies every stage's layers
// into its `model`, and every other stage sends `stage_state` (its optimizer
// state, named as the dense model's parameters) as an encoded checkpoint's bytes.
void gather_training_state(torch::nn::Sequential& model, const std::vector<StageBounds>& bounds,
                           std::map<std::string, torch::Tensor> stage_state, Communicator& pipeline,
                           TrainingCheckpoint& c) {
  const int s = pipeline.rank();
  gather_stages(model, bounds, pipeline);
  TrainingCheckpoint mine;
  mine.optimizer = std::move(stage_state);
  if (s != 0) {
    const std::vector<std::uint8_t> bytes = encode_checkpoint(mine);
    const auto size = static_cast<std::int64_t>(bytes.size());
    pipeline.send(std::span<const std::int64_t>(&size, 1), 0);
    pipeline.send(std::span<const std::uint8_t>(bytes), 0);
    return;
  }
  c.model = module_state(*model);
  c.optimizer = std::move(mine.optimizer);
  for (int from = 1; from < pipeline.size(); ++from) {
    std::int64_t size = 0;
    pipeline.recv(std::span<std::int64_t>(&size, 1), from);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
    pipeline.recv(std::span<std::uint8_t>(bytes), from);
    for (auto& [name, tensor] : decode_checkpoint(bytes, detail::concat("stage ", from, "'s optimizer state")).optimizer)
      c.optimizer.emplace(name, tensor);
  }
}

// The newest whole checkpoint in `dir`, read by rank 0 and sent to every rank
// (all start from the same one, and `dir` need not be shared between hosts).
std::optional<TrainingCheckpoint> load_everywhere(Communicator& world, const std::string& dir) {
  std::optional<CheckpointBytes> bytes;
  std::int64_t size = -1;
  if (world.rank() == 0) {
    bytes = read_latest_checkpoint_bytes(dir);
    if (bytes) size = static_cast<std::int64_t>(bytes->payload.size());
  }
  world.broadcast(std::span<std::int64_t>(&size, 1), 0);
  if (size < 0) return std::nullopt;
  if (world.rank() != 0) bytes = CheckpointBytes{dir, std::vector<std::uint8_t>(static_cast<std::size_t>(size))};
  world.broadcast(std::span<std::uint8_t>(bytes->payload), 0);
  if (world.rank() == 0) std::printf("dagr train: resuming from %s\n", bytes->path.c_str());
  return decode_checkpoint(bytes->payload, bytes->path);
}

}  // namespace

void check_pipeline_options(const TrainOptions& o) {
  DAGR_ENFORCE(o.pipeline_parallel >= 1, InputError, "--pipeline-parallel must be at least 1");
  DAGR_ENFORCE(o.micro_batches >= 1, InputError, "--micro-batches must be at least 1");
  parse_schedule_kind(o.schedule_pp);
  DAGR_ENFORCE(o.pipeline_balance == "parameters" || o.pipeline_balance == "time", InputError,
               "unknown --pipeline-balance '", o.pipeline_balance, "' (parameters, time)");
  if (o.pipeline_parallel == 1) {
    DAGR_ENFORCE(o.micro_batches == 1, InputError, "--micro-batches needs --pipeline-parallel 2 or more");
    return;
  }
  DAGR_ENFORCE(o.micro_batches <= o.batch_size, InputError, "--micro-batches ", o.micro_batches,
               " is more than the batch of ", o.batch_size);
  const char* refused = o.dp_clip > 0                  ? "--dp-clip"
                        : o.secure_clip > 0            ? "--secure-aggregation"
                        : o.zero > 0                   ? "--zero"
                        : o.comm_hook != "none"        ? "--comm-hook"
                        : o.elastic                    ? "--elastic"
                        : o.max_restarts > 0           ? "--max-restarts"
                        : o.eval_every > 0             ? "--eval-every"
                                                       : nullptr;
  DAGR_ENFORCE(!refused, InputError, refused, " cannot be combined with --pipeline-parallel yet");
  const int layers = static_cast<int>(models::make_model(o.model, 1, o.depth)->size());
  DAGR_ENFORCE(o.pipeline_parallel <= layers, InputError, "--pipeline-parallel ", o.pipeline_parallel, ": the ",
               o.model, " has only ", layers, " layers to cut into stages");
  // Before any worker starts, on the cut by parameters (--pipeline-balance
  // time cuts where it measures; each rank checks that cut again).
  if (o.tensor_parallel > 1) {
    auto model = models::make_model(o.model, o.hidden, o.depth);
    check_tensor_split(model, partition_by_parameters(model, o.pipeline_parallel), o.tensor_parallel);
  }
}

std::string pipeline_schedule_text(const TrainOptions& o) {
  check_pipeline_options(o);
  const auto plan = make_schedule(parse_schedule_kind(o.schedule_pp), o.pipeline_parallel, o.micro_batches);
  auto model = models::make_model(o.model, o.hidden, o.depth);
  std::string text;
  if (o.pipeline_balance == "parameters") {
    const auto bounds = partition_by_parameters(model, o.pipeline_parallel);
    for (int s = 0; s < o.pipeline_parallel; ++s) {
      auto stage = make_stage(model, bounds[static_cast<std::size_t>(s)]);
      text += detail::concat("stage ", s, ": layers ", bounds[static_cast<std::size_t>(s)].begin, "..",
                             bounds[static_cast<std::size_t>(s)].end - 1, " of ", o.model, ", ",
                             parameter_count(*stage), " parameters\n");
    }
  }
  return text + describe(plan) + picture(plan, simulate(plan));
}

int run_pipeline_training(const TrainOptions& o) {
  const auto start = Clock::now();
  check_pipeline_options(o);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // as dagr train: keep libtorch's temporaries in the heap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  set_compute_threads(o.threads);
  const data::ImageSet train = data::load_image_bytes(o.dataset, "train");
  const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
  if (!wait_until_started()) return 0;
  Communicator world = Communicator::from_env();
  const int rank = world.rank(), P = o.pipeline_parallel, M = o.micro_batches;
  torch::manual_seed(o.seed);
  PipelineGroups groups = make_pipeline_groups(world, P, o.tensor_parallel);
  const int s = groups.pipeline.rank(), D = groups.data.size(), T = groups.tensor.size();
  const bool first = s == 0, last = s == P - 1;
  auto model = models::make_model(o.model, o.hidden, o.depth);  // the same on every rank: the seed is
  // --resume: every rank loads the whole model (it holds all layers, trains its
  // own) and, below, its stage's share of the optimizer state, by the dense names.
  const std::optional<TrainingCheckpoint> resumed = o.resume ? load_everywhere(world, o.out) : std::nullopt;
  if (resumed) load_module_state(*model, resumed->model);
  const auto bounds = choose_bounds(o, model, world, data::normalize_images(train.images.narrow(0, 0, std::max<std::int64_t>(o.batch_size / M, 1))));
  const StageBounds own = bounds[static_cast<std::size_t>(s)];
  auto dense_stage = make_stage(model, own);
  // --tensor-parallel T: the stage's Linear → ReLU → Linear runs split over its tensor group.
  std::optional<TensorParallelStage> split;
  if (T > 1) {
    check_tensor_split(model, bounds, T);
    split.emplace(dense_stage, groups.tensor);
  }
  auto stage = split ? split->module() : dense_stage;
  PipelineExecutor exec(stage, groups.pipeline, make_schedule(parse_schedule_kind(o.schedule_pp), P, M),
                        /*measure_memory=*/true);
  auto optimizer = make_optimizer(o, *stage);
  if (resumed) {
    const auto named = trained_parameters(model, own, split);
    auto state = resumed->optimizer;
    if (split) map_per_element_state(state, named, [&](const auto& whole) { return split->shard(whole); });
    load_optimizer_state(*optimizer, named, state);
  }
  const std::uint64_t sampler_seed = resumed ? resumed->sampler_seed : o.seed;
  DistributedSampler sampler({.dataset_size = train.images.size(0), .rank = groups.data.rank(), .world_size = D,
                              .seed = sampler_seed});
  const std::int64_t per_rank = sampler.samples_per_rank(), batch = o.batch_size;
  DAGR_ENFORCE(batch <= per_rank, InputError, "--batch-size ", batch, " is more than the ", per_rank,
               " samples each of the ", D, " data-parallel ranks trains on per epoch");
  const std::int64_t steps = sampler.steps_per_epoch(batch);
  const std::int64_t total_steps = o.max_steps > 0 ? std::min(o.max_steps, steps * o.epochs) : steps * o.epochs;

  // Where to start: the checkpoint's global position p in its epoch's sample
  // order is position p / D of each pipeline's shard (as in dagr train), and
  // the step count follows from it, so the learning-rate schedule goes on.
  std::int64_t first_epoch = 1, first_position = 0, step_count = 0;
  double earlier_sums[3] = {0, 0, 0};  // the resumed epoch's global sums before the checkpoint
  double test_accuracy = 0;
  std::vector<std::string> metrics_lines;  // rank 0's lines so far (kept in the checkpoints)
  if (resumed) {
    first_epoch = resumed->epoch;
    metrics_lines = resumed->metrics;
    const auto extra = nlohmann::json::parse(resumed->extra);
    for (int i = 0; i < 3; ++i) earlier_sums[i] = extra.at("epoch_sums")[i];
    test_accuracy = extra.at("test_accuracy");
    first_position = resumed->samples_in_epoch / D;
    step_count = (first_epoch - 1) * steps + (first_position + batch - 1) / batch;
  }

  const std::string metrics_path = o.out + "/metrics.jsonl", partial_metrics_path = metrics_path + ".part";
  std::ofstream metrics;
  if (rank == 0) {
    if (!resumed) remove_checkpoints(o.out);  // --resume continues only the last run started here
    metrics.open(partial_metrics_path, std::ios::trunc);
    DAGR_ENFORCE(metrics, InputError, "cannot write ", partial_metrics_path);
    for (const std::string& line : metrics_lines) metrics << line << '\n';
    metrics.flush();
    const auto& sim = exec.simulation();
    std::printf("dagr train: %s on %lld samples, %d workers (pipeline-parallel %d × tensor-parallel %d × data-parallel "
                "%d) × batch %lld in %d micro-batches, %s lr %g, %d epochs\n",
                o.model.c_str(), static_cast<long long>(train.images.size(0)), world.size(), P, T, D,
                static_cast<long long>(batch), M, o.optimizer.c_str(), o.lr, o.epochs);
    for (int k = 0; k < P; ++k) {
      const auto layers = make_stage(model, bounds[static_cast<std::size_t>(k)]);
      const std::size_t runs = T > 1 ? splittable_widths(layers).size() : 0;
      const std::string split_text =
          T == 1     ? ""
          : runs > 0 ? detail::concat(", its ", runs, " Linear → ReLU → Linear runs split over ", T, " ranks")
                     : detail::concat(", no Linear → ReLU → Linear run inside: each of its ", T, " ranks computes it whole");
      std::printf("dagr train: stage %d: layers %d..%d, %lld parameters%s\n", k,
                  bounds[static_cast<std::size_t>(k)].begin, bounds[static_cast<std::size_t>(k)].end - 1,
                  static_cast<long long>(parameter_count(*layers)), split_text.c_str());
    }
    std::printf("dagr train: %s schedule simulated: bubble %.1f %%, peak in-flight micro-batches %d\n",
                o.schedule_pp.c_str(), 100 * sim.bubble_fraction, sim.max_peak_in_flight);
    if (o.resume && !resumed) std::printf("dagr train: no checkpoint in %s, starting from the beginning\n", o.out.c_str());
    if (resumed)
      std::printf("dagr train: continuing at epoch %lld, sample %lld of it (step %lld)%s\n",
                  static_cast<long long>(first_epoch), static_cast<long long>(resumed->samples_in_epoch),
                  static_cast<long long>(step_count),
                  resumed->samples_in_epoch % D != 0 ? ", not a multiple of the pipelines: a few samples twice" : "");
    std::fflush(stdout);
  }

  // A dense training-state checkpoint (collective): `local_sums` are this
  // rank's sums of the epoch so far; rank 0 writes.
  std::int64_t checkpoints = 0, last_checkpoint_steps = -1;
  double checkpoint_s = 0;
  auto checkpoint = [&](std::int64_t epoch, std::int64_t samples_in_epoch, const double (&local_sums)[3]) {
    if (step_count == last_checkpoint_steps) return;
    const auto t0 = Clock::now();
    double sums[3] = {local_sums[0], local_sums[1], local_sums[2]};
    world.allreduce(std::span<double>(sums, 3));
    TrainingCheckpoint c;
    if (groups.data.rank() == 0) {
      auto state = stage_optimizer_state(*optimizer, model, own, split);
      if (split) split->gather_into(dense_stage);
      if (groups.tensor.rank() == 0) gather_training_state(model, bounds, std::move(state), groups.pipeline, c);
    }
    if (rank == 0) {
      c.epoch = epoch;
      c.samples_in_epoch = samples_in_epoch;
      c.steps = step_count;
      c.sampler_seed = sampler_seed;
      c.metrics = metrics_lines;
      c.extra = nlohmann::json{{"epoch_sums", {earlier_sums[0] + sums[0], earlier_sums[1] + sums[1],
                                               earlier_sums[2] + sums[2]}},
                               {"test_accuracy", test_accuracy}}
                    .dump();
      write_checkpoint(o.out, c);
    }
    last_checkpoint_steps = step_count;
    checkpoint_s += seconds_since(t0);
    ++checkpoints;
  };

  // Step figures after a warm-up (as dagr train times them), or over all steps of a short run.
  constexpr std::int64_t kWarmup = 20;
  struct Totals {
    double compute = 0, recv = 0, send = 0, wall = 0, step = 0, samples = 0, steps = 0;
  } all, timed;
  std::int64_t run_steps = 0, peak_bytes = 0;
  int peak_in_flight = 0;
  const auto train_start = Clock::now();
  for (std::int64_t epoch = first_epoch; epoch <= o.epochs && step_count < total_steps; ++epoch) {
    sampler.set_epoch(epoch);
    const std::vector<std::int64_t>& order = sampler.indices();
    double sums[3] = {0, 0, 0};  // the last stage's loss·samples, correct, samples
    std::int64_t position = epoch == first_epoch ? first_position : 0;
    for (; position < per_rank && step_count < total_steps; position += batch) {
      const auto step_start = Clock::now();
      const std::int64_t end = std::min(per_rank, position + batch), n = end - position;
      const auto idx = torch::from_blob(const_cast<std::int64_t*>(order.data() + position), {n}, torch::kInt64);
      std::vector<torch::Tensor> xs, ys;
      if (first) xs = torch::tensor_split(data::normalize_images(train.images, idx), M);
      if (last) ys = torch::tensor_split(train.labels.index_select(0, idx), M);
      set_learning_rate(*optimizer, o, step_count, total_steps);
      optimizer->zero_grad();
      const auto stats = exec.step(xs, [&](int i, const torch::Tensor& out) {
        namespace F = torch::nn::functional;
        return F::cross_entropy(out, ys[static_cast<std::size_t>(i)], F::CrossEntropyFuncOptions().reduction(torch::kSum)) /
               static_cast<double>(n);
      });
      average_gradients(*stage, groups.data);
      optimizer->step();
      if (last && groups.tensor.rank() == 0) {  // the tensor group's ranks computed the same loss
        sums[0] += stats.loss * static_cast<double>(n);
        for (int i = 0; i < M; ++i)
          sums[1] += static_cast<double>(
              correct_predictions(stats.outputs[static_cast<std::size_t>(i)], ys[static_cast<std::size_t>(i)]));
        sums[2] += static_cast<double>(n);
      }
      ++step_count;
      ++run_steps;
      const double step_s = seconds_since(step_start);
      auto add = [&](Totals& t) {
        t.compute += stats.compute_seconds;
        t.recv += stats.recv_seconds;
        t.send += stats.send_seconds;
        t.wall += stats.wall_seconds;
        t.step += step_s;
        t.samples += static_cast<double>(n);
        ++t.steps;
      };
      add(all);
      if (run_steps > kWarmup) add(timed);
      if (run_steps > kWarmup || total_steps <= kWarmup) {
        peak_bytes = std::max(peak_bytes, stats.peak_activation_bytes);
        peak_in_flight = std::max(peak_in_flight, stats.peak_in_flight);
      }
      if (o.checkpoint_every > 0 && step_count % o.checkpoint_every == 0 && end < per_rank)
        checkpoint(epoch, end * D, sums);
      if (o.stop_after_steps > 0 && step_count == o.stop_after_steps) {
        if (rank == 0) {
          std::printf("dagr train: stopped after step %lld (--stop-after-steps); continue with --resume\n",
                      static_cast<long long>(step_count));
          std::fflush(stdout);
        }
        world.barrier();
        return 0;
      }
    }
    double global[3] = {sums[0], sums[1], sums[2]};
    world.allreduce(std::span<double>(global, 3));
    for (int i = 0; i < 3; ++i) global[i] += earlier_sums[i];
    test_accuracy = evaluate_pipeline(exec, test.images, test.labels, groups, world);
    if (rank == 0) {
      const nlohmann::json line{{"epoch", epoch}, {"train_loss", global[0] / std::max(global[2], 1.0)},
                                {"train_accuracy", global[1] / std::max(global[2], 1.0)},
                                {"test_accuracy", test_accuracy}, {"seconds", seconds_since(train_start)}};
      std::printf("Epoch %lld: global training loss %.4f, training accuracy %.4f, test accuracy %.4f (%.1f s)\n",
                  static_cast<long long>(epoch), global[0] / std::max(global[2], 1.0),
                  global[1] / std::max(global[2], 1.0), test_accuracy, seconds_since(train_start));
      std::fflush(stdout);
      metrics_lines.push_back(line.dump());
      metrics << line.dump() << std::endl;
    }
    // The epoch's end (or where --max-steps stopped it): its figures are in the metrics now.
    const double none[3] = {0, 0, 0};
    for (double& e : earlier_sums) e = 0;
    if (position >= per_rank) checkpoint(epoch + 1, 0, none);
    else checkpoint(epoch, position * D, none);
    // Rank 0 writes the checkpoint (and the metrics) while the others would
    // start the next epoch: the last stage's first receive would then count
    // that writing as its step's wait. The ranks start each epoch together.
    world.barrier();
  }
  const double train_s = seconds_since(train_start);

  // Figures over the world: the measured bubble is each rank's idle share of
  // its steps' wall time (1 − compute / wall), averaged over the ranks.
  const Totals& t = timed.wall > 0 ? timed : all;
  double figures[3] = {t.wall > 0 ? 1.0 - t.compute / t.wall : 0, t.step, t.samples};
  world.allreduce(std::span<double>(figures, 3));
  std::int64_t peaks[2] = {peak_bytes, peak_in_flight};
  world.allreduce(std::span<std::int64_t>(peaks, 2), ReduceOp::max);
  const double bubble = figures[0] / world.size();
  // Each pipeline trains its own samples; its P·T ranks share them (and each rank's step time is the pipeline's).
  const double throughput = figures[1] > 0 ? figures[2] / (P * T) / (figures[1] / world.size()) : 0;
  // Where each rank's step goes, per step: forward and backward, receive
  // actions (waiting included), sends, the rest of the schedule's time, and
  // outside the schedule (the batch's preparation, the gradient average, the optimizer).
  const double per_step = std::max(t.steps, 1.0);
  const double mine[5] = {t.compute / per_step, t.recv / per_step, t.send / per_step,
                          (t.wall - t.compute - t.recv - t.send) / per_step, (t.step - t.wall) / per_step};
  std::vector<double> breakdown(static_cast<std::size_t>(5 * world.size()));
  world.allgather(std::span<const double>(mine, 5), std::span<double>(breakdown));
  // The averaged bubble mixes two losses: the fill and drain of the schedule,
  // and the waits of a faster stage for a slower neighbour (stages cut at
  // layer boundaries rarely do equal work). The slowest stage (the most
  // forward and backward per step) never waits for a slower one: its idle
  // share is the fill and drain the step pays, the figure to set beside
  // (P−1)/(M+P−1); the imbalance is the slowest stage's work over the mean.
  auto row = [&](int r) { return breakdown.data() + 5 * r; };  // rank r's 5 figures
  int slowest = 0;
  double work_sum = 0;
  for (int r = 0; r < world.size(); ++r) {
    work_sum += row(r)[0];
    if (row(r)[0] > row(slowest)[0]) slowest = r;
  }
  const double* sb = row(slowest);
  const double slowest_wall = sb[0] + sb[1] + sb[2] + sb[3];
  const double bubble_slowest = slowest_wall > 0 ? 1.0 - sb[0] / slowest_wall : 0;
  const double imbalance = work_sum > 0 ? sb[0] * world.size() / work_sum : 1;

  if (groups.data.rank() == 0) {
    if (split) split->gather_into(dense_stage);
    if (groups.tensor.rank() == 0) gather_stages(model, bounds, groups.pipeline);
  }
  if (rank == 0) {
    const std::string path = o.out + "/model.pt";
    torch::save(model, path + ".tmp");
    std::filesystem::rename(path + ".tmp", path);
    std::printf("Summary: %.2f s training (evaluation included), %.0f samples/s in training steps over %d workers, "
                "test accuracy %.4f (%.2f s from start to the first step)\n",
                train_s, throughput, world.size(), test_accuracy,
                std::chrono::duration<double>(train_start - start).count());
    std::printf("Pipeline: measured bubble %.1f %% (simulated %.1f %%), peak in-flight micro-batches %lld "
                "(schedule: %d), peak activation memory %.2f MiB (largest stage)\n",
                100 * bubble, 100 * exec.simulation().bubble_fraction, static_cast<long long>(peaks[1]),
                exec.simulation().max_peak_in_flight, static_cast<double>(peaks[0]) / (1 << 20));
    std::printf("Pipeline: the slowest stage (rank %d) idles %.1f %% of its steps; its forward and backward are "
                "%.2f× the ranks' mean (the rest of the bubble is faster stages waiting for it)\n",
                slowest, 100 * bubble_slowest, imbalance);
    for (int r = 0; r < world.size(); ++r) {
      const double* b = row(r);
      std::printf("Pipeline rank %d (stage %d) per step: %.2f ms forward and backward, %.2f ms in receives, %.2f ms "
                  "in sends, %.2f ms else in the schedule, %.2f ms outside it\n",
                  r, r / T % P, 1e3 * b[0], 1e3 * b[1], 1e3 * b[2], 1e3 * b[3], 1e3 * b[4]);
    }
    std::printf("Checkpoints: %lld, %.1f ms each (dense, written by rank 0)\n", static_cast<long long>(checkpoints),
                1e3 * checkpoint_s / std::max<std::int64_t>(checkpoints, 1));
    std::printf("Model saved to %s/model.pt, metrics in %s/metrics.jsonl\n", o.out.c_str(), o.out.c_str());
    // [forward and backward, receives, sends, else in the schedule, outside it] per rank, ms per step.
    nlohmann::json step_ms = nlohmann::json::array();
    for (int r = 0; r < world.size(); ++r) {
      nlohmann::json ms = nlohmann::json::array();
      for (int i = 0; i < 5; ++i) ms.push_back(1e3 * row(r)[i]);
      step_ms.push_back(ms);
    }
    metrics << nlohmann::json{{"summary", true},
                              {"seconds", train_s},
                              {"samples_per_second", throughput},
                              {"test_accuracy", test_accuracy},
                              {"pipeline_bubble_measured", bubble},
                              {"pipeline_bubble_simulated", exec.simulation().bubble_fraction},
                              {"pipeline_bubble_slowest_stage", bubble_slowest},
                              {"pipeline_stage_imbalance", imbalance},
                              {"pipeline_peak_in_flight", peaks[1]},
                              {"pipeline_peak_activation_bytes", peaks[0]},
                              {"pipeline_step_ms_per_rank", step_ms}}
                   .dump()
            << std::endl;
    metrics.close();
    std::filesystem::rename(partial_metrics_path, metrics_path);
  }
  world.barrier();
  if (rank == 0 && o.on_finished) o.on_finished();
  if (rank == 0) std::printf("Training finished!\n");
  return 0;
}

}  // namespace dagr::train
