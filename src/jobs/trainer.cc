// One rank of `dagr train`, start to finish:
//   join the group → load the data set → build the model, wrap it in DDP →
//   each epoch: this rank's shard (DistributedSampler) in batches of b (with
//   --balance-batch, its share of each step's D·b samples, BatchBalancer) →
//   forward, loss, backward (DDP averages gradients as they are produced;
//   with --dp-clip: forward with per-example clipping, this rank's share of
//   the noise, and a backward that hands DDP the result, dagr/train/dp_sgd.h) →
//   optimizer step → per-rank and global figures, parallel test evaluation →
//   rank 0 saves the model atomically and writes metrics.
// Training-state checkpoints (dagr/train/checkpoint.h) are written every
// --checkpoint-every steps and after every epoch; --resume starts from the
// newest one: the model, the optimizer, the position in the epoch's sample
// order (global, so another number of workers continues from the same place)
// and the metrics so far.
#include "trainer.h"

#include <malloc.h>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <vector>
#include <nlohmann/json.hpp>

#include "dagr/data/fashion_mnist.h"
#include "dagr/launch/standby.h"
#include "dagr/error.h"
#include "dagr/train/accuracy.h"
#include "dagr/train/batch_balancer.h"
#include "dagr/train/checkpoint.h"
#include "dagr/train/compute_threads.h"
#include "dagr/train/ddp.h"
#include "dagr/train/dp_sgd.h"
#include "dagr/train/fused_optimizers.h"
#include "dagr/train/zero_optimizer.h"
#include "dagr/train/powersgd.h"
#include "dagr/train/privacy_accountant.h"
#include "dagr/train/sampler.h"
#include "dagr/train/timeline.h"
#include "dagr/models/models.h"
#include "network.h"
#include "ps_trainer.h"
#include "pipeline_trainer.h"

namespace dagr::train {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Seconds this process has been running, or since `dagr train` started its
// workers (DAGR_START_NS) when it did.
double seconds_since_command_start() {
  const char* start_ns = std::getenv("DAGR_START_NS");
  if (!start_ns) return -1;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return (std::chrono::duration_cast<std::chrono::nanoseconds>(now).count() - std::atoll(start_ns)) / 1e9;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o, torch::nn::Module& m) {
  if (o.optimizer == "sgd")
    return std::make_unique<FusedSgd>(m.parameters(), torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  if (o.optimizer == "adam")
    return std::make_unique<FusedAdam>(m.parameters(), torch::optim::AdamOptions(o.lr));
  throw InputError(detail::concat("unknown optimizer '", o.optimizer, "' (sgd, adam)"));
}

// --zero 1|2: the same optimizer, stepping only this rank's shards of DDP's buckets.
std::unique_ptr<torch::optim::Optimizer> make_zero_optimizer(const TrainOptions& o, DistributedDataParallel& ddp) {
  auto make = [sgd = o.optimizer == "sgd", lr = o.lr, momentum = o.momentum](std::vector<torch::Tensor> shard)
      -> std::unique_ptr<torch::optim::Optimizer> {
    if (sgd) return std::make_unique<FusedSgd>(shard, torch::optim::SGDOptions(lr).momentum(momentum));
    return std::make_unique<FusedAdam>(shard, torch::optim::AdamOptions(lr));
  };
  return std::make_unique<ZeroOptimizer>(ddp, make, ZeroOptions{.stage = o.zero});
}

// --comm-hook (and --powersgd-uncompressed): how DDP averages each gradient
// bucket; nullptr for none (one allreduce).
std::shared_ptr<CommHook> make_comm_hook(const std::string& name, const TrainOptions& o) {
  if (name == "fp16") return fp16_compress_hook();
  if (name == "bf16") return bf16_compress_hook();
  if (name == "powersgd")
    return powersgd_hook({.rank = o.powersgd_rank,
                          .start_iter = o.powersgd_start_iter,
                          .seed = o.seed,
                          .uncompressed_hook = make_comm_hook(o.powersgd_uncompressed, o)});
  return nullptr;
}

// A progress bar on a terminal; nothing otherwise (the epoch lines follow).
// Each step's gradients start as none, not as zeros (PyTorch's zero_grad(set_to_none=True);
// libtorch 1.13's Optimizer::zero_grad only zeroes): backward then hands each
// gradient over instead of adding it to zeros, and DDP moves it into its bucket
// — two passes over the gradients fewer a step.
void clear_gradients(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) p.mutable_grad().reset();
}

void show_progress(int epoch, int epochs, std::int64_t step, std::int64_t steps, double loss) {
  if (!isatty(STDERR_FILENO)) return;
  const int width = 30, filled = static_cast<int>(width * (step + 1) / steps);
  std::fprintf(stderr, "\repoch %d/%d [%.*s%*s] %lld/%lld loss %.4f", epoch, epochs, filled,
               "##############################", width - filled, "", static_cast<long long>(step + 1),
               static_cast<long long>(steps), loss);
  if (step + 1 == steps) std::fprintf(stderr, "\r%*s\r", 80, "");
}

// The learning rate at `step` of `total`: cosine decay from the base rate to zero.
void apply_schedule(torch::optim::Optimizer& optimizer, const TrainOptions& o, std::int64_t step, std::int64_t total) {
  if (o.schedule == "constant") return;
  const double lr = o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// Where a run stands, besides the model and optimizer: what a checkpoint records.
struct Progress {
  std::int64_t epoch = 1, samples_in_epoch = 0, steps = 0;
  double seconds = 0;                 // the metrics' time axis at this point (see training_seconds)
  std::uint64_t seed = 0;
  std::vector<std::string> metrics;  // rank 0's lines so far
  double epoch_sums[3] = {0, 0, 0};   // loss·samples, correct, samples of the epoch so far, each sample once
  double test_accuracy = 0;
};

// The parameters of net.module under the dense model's names (the same order).
torch::OrderedDict<std::string, torch::Tensor> dense_named_parameters(Network& net, torch::nn::Sequential& dense) {
  const auto names = dense->named_parameters();
  const auto params = net.module->parameters();
  DAGR_ENFORCE(names.size() == params.size(), Error, "the model has ", params.size(), " parameters, its dense form ",
               names.size());
  torch::OrderedDict<std::string, torch::Tensor> named;
  for (std::size_t i = 0; i < params.size(); ++i) named.insert(names[i].key(), params[i]);
  return named;
}

// The checkpoint of this step (collective: tensor-parallel shards are gathered).
TrainingCheckpoint capture(Network& net, torch::optim::Optimizer& optimizer, const Progress& p) {
  TrainingCheckpoint c;
  c.epoch = p.epoch;
  c.samples_in_epoch = p.samples_in_epoch;
  c.steps = p.steps;
  c.sampler_seed = p.seed;
  c.metrics = p.metrics;
  c.extra = nlohmann::json{{"epoch_sums", p.epoch_sums}, {"test_accuracy", p.test_accuracy}, {"seconds", p.seconds}}
                .dump();
  {
    at::Generator generator = torch::globalContext().defaultGenerator(torch::kCPU);  // a handle on the one generator
    std::lock_guard<std::mutex> lock(generator.mutex());
    c.rng_state = generator.get_state();
  }
  auto dense = net.dense();
  c.model = module_state(*dense);
  const auto named = dense_named_parameters(net, dense);
  c.optimizer = optimizer_state(optimizer, named);
  // Optimizer moments are sharded like their parameters: gathered to the dense form.
  map_per_element_state(c.optimizer, named, [&](const auto& shards) { return gather_like_parameters(net, shards); });
  return c;
}

// Puts a checkpoint's model into `net` (collective: each rank keeps its shard).
void restore_model(Network& net, const TrainOptions& o, const TrainingCheckpoint& c) {
  auto dense = models::make_model(o.model, o.hidden, o.depth);
  load_module_state(*dense, c.model);
  net.load_dense(dense);
  at::Generator generator = torch::globalContext().defaultGenerator(torch::kCPU);
  std::lock_guard<std::mutex> lock(generator.mutex());
  if (c.rng_state.defined()) generator.set_state(c.rng_state);
}

void restore_optimizer(Network& net, torch::optim::Optimizer& optimizer, const TrainingCheckpoint& c) {
  auto dense = net.dense();
  const auto named = dense_named_parameters(net, dense);
  std::map<std::string, torch::Tensor> state = c.optimizer;
  map_per_element_state(state, named, [&](const auto& whole) { return shard_like_parameters(net, whole); });
  load_optimizer_state(optimizer, named, state);
}

// The newest whole checkpoint in `dir`, read by rank 0 and sent to every rank
// (so all start from the same one, and `dir` need not be shared between hosts).
std::optional<TrainingCheckpoint> load_everywhere(Communicator& comm, const std::string& dir) {
  std::optional<CheckpointBytes> bytes;
  std::int64_t size = -1;
  if (comm.rank() == 0) {
    bytes = read_latest_checkpoint_bytes(dir);
    if (bytes) size = static_cast<std::int64_t>(bytes->payload.size());
  }
  comm.broadcast(std::span<std::int64_t>(&size, 1), 0);
  if (size < 0) return std::nullopt;
  if (comm.rank() != 0) bytes = CheckpointBytes{dir, std::vector<std::uint8_t>(static_cast<std::size_t>(size))};
  comm.broadcast(std::span<std::uint8_t>(bytes->payload), 0);
  if (comm.rank() == 0) std::printf("dagr train: resuming from %s\n", bytes->path.c_str());
  return decode_checkpoint(bytes->payload, bytes->path);
}

void save_atomically(torch::nn::Sequential model, const std::string& path) {
  const std::string tmp = path + ".tmp";
  torch::save(model, tmp);
  std::filesystem::rename(tmp, path);
}

}  // namespace

void check_options(const TrainOptions& o) {
  check_ps_options(o);
  DAGR_ENFORCE(o.epochs >= 1, InputError, "--epochs must be at least 1");
  DAGR_ENFORCE(o.batch_size >= 1, InputError, "--batch-size must be at least 1");
  DAGR_ENFORCE(o.threads >= 1, InputError, "--threads must be at least 1");
  DAGR_ENFORCE(o.depth >= 1, InputError, "--depth must be at least 1");
  DAGR_ENFORCE(o.depth == models::kDefaultDepth || o.model == "deep-mlp", InputError, "--depth ", o.depth,
               " is the deep-mlp's (the ", o.model, " has a fixed depth)");
  DAGR_ENFORCE(o.max_steps >= 0, InputError, "--max-steps must not be negative");
  DAGR_ENFORCE(o.checkpoint_every >= 0, InputError, "--checkpoint-every must not be negative");
  DAGR_ENFORCE(o.eval_every >= 0, InputError, "--eval-every must not be negative");
  DAGR_ENFORCE(o.stop_after_steps >= 0, InputError, "--stop-after-steps must not be negative");
  DAGR_ENFORCE(std::isfinite(o.lr) && o.lr > 0, InputError, "--lr must be a finite number above 0, not ", o.lr);
  DAGR_ENFORCE(std::isfinite(o.momentum) && o.momentum >= 0 && o.momentum <= 1, InputError,
               "--momentum must be a number from 0 to 1, not ", o.momentum);
  DAGR_ENFORCE(o.schedule == "cosine" || o.schedule == "constant", InputError, "unknown schedule '", o.schedule,
               "' (cosine, constant)");
  DAGR_ENFORCE(!o.elastic || o.tensor_parallel == 1 || o.pipeline_parallel > 1, InputError,
               "--elastic needs --tensor-parallel 1 (a tensor group cannot lose a shard; use --max-restarts)");
  DAGR_ENFORCE(o.min_workers >= 1, InputError, "--min-workers must be at least 1");
  DAGR_ENFORCE(o.zero >= 0 && o.zero <= 2, InputError, "--zero must be 1 or 2 (0: off), not ", o.zero);
  DAGR_ENFORCE(o.zero == 0 || o.tensor_parallel == 1, InputError, "--zero needs --tensor-parallel 1");
  DAGR_ENFORCE(o.zero == 0 || !o.elastic, InputError,
               "--zero cannot be --elastic (a lost rank takes its shard of the optimizer state with it; use --max-restarts)");
  DAGR_ENFORCE(o.zero != 2 || o.comm_hook == "none", InputError,
               "--zero 2 averages the gradients through its own reduce-scatter hook: --comm-hook needs --zero 1");
  DAGR_ENFORCE(o.zero != 2 || o.secure_clip == 0, InputError,
               "--zero 2 reduce-scatters the gradients, --secure-aggregation averages them whole: use --zero 1 with it");
  DAGR_ENFORCE(o.comm_hook == "none" || o.comm_hook == "fp16" || o.comm_hook == "bf16" || o.comm_hook == "powersgd",
               InputError, "unknown --comm-hook '", o.comm_hook, "' (none, fp16, bf16, powersgd)");
  DAGR_ENFORCE(o.comm_hook == "none" || o.secure_clip == 0, InputError,
               "--comm-hook and --secure-aggregation exclude each other (secure aggregation is a hook of its own)");
  DAGR_ENFORCE(o.comm_hook != "powersgd" || o.tensor_parallel == 1, InputError,
               "--comm-hook powersgd needs --tensor-parallel 1 (its state would be per shard)");
  DAGR_ENFORCE(o.powersgd_rank >= 1, InputError, "--powersgd-rank must be at least 1, not ", o.powersgd_rank);
  DAGR_ENFORCE(o.powersgd_start_iter >= 0, InputError, "--powersgd-start-iter must not be negative");
  DAGR_ENFORCE(o.powersgd_uncompressed == "none" || o.powersgd_uncompressed == "fp16" ||
                   o.powersgd_uncompressed == "bf16",
               InputError, "unknown --powersgd-uncompressed '", o.powersgd_uncompressed, "' (none, fp16, bf16)");
  DAGR_ENFORCE(o.powersgd_uncompressed == "none" || o.comm_hook == "powersgd", InputError,
               "--powersgd-uncompressed needs --comm-hook powersgd");
  DAGR_ENFORCE(std::isfinite(o.secure_clip) && o.secure_clip >= 0, InputError,
               "--secure-aggregation's clip must be a finite number above 0, not ", o.secure_clip);
  DAGR_ENFORCE(std::isfinite(o.dp_clip) && o.dp_clip >= 0, InputError, "--dp-clip must be a finite number above 0, not ",
               o.dp_clip);
  if (o.dp_clip > 0) {
    DAGR_ENFORCE((o.dp_noise >= 0) != (o.dp_epsilon > 0), InputError,
                 "--dp-clip needs one of --dp-noise (σ ≥ 0) and --dp-epsilon (ε > 0)");
    DAGR_ENFORCE(std::isfinite(o.dp_noise) && std::isfinite(o.dp_epsilon), InputError,
                 "--dp-noise and --dp-epsilon must be finite");
    DAGR_ENFORCE(o.dp_epsilon >= 0 && (o.dp_noise >= 0 || o.dp_noise == -1), InputError,
                 "--dp-noise must be at least 0 and --dp-epsilon above 0");
    DAGR_ENFORCE(o.dp_delta > 0 && o.dp_delta < 1, InputError, "--dp-delta must be between 0 and 1, not ", o.dp_delta);
    DAGR_ENFORCE(o.tensor_parallel == 1, InputError, "--dp-clip needs --tensor-parallel 1 (per-example clipping "
                 "works on the dense model)");
  } else {
    DAGR_ENFORCE(o.dp_noise < 0 && o.dp_epsilon == 0 && o.dp_noise_seed < 0, InputError,
                 "--dp-noise, --dp-epsilon and --dp-noise-seed need --dp-clip");
  }
  if (o.balance_batch) {
    DAGR_ENFORCE(o.mode == "ddp" && o.pipeline_parallel == 1 && o.tensor_parallel == 1, InputError,
                 "--balance-batch needs data parallelism alone (--mode ddp, --tensor-parallel 1, --pipeline-parallel 1)");
    DAGR_ENFORCE(o.dp_clip == 0 && o.secure_clip == 0, InputError,
                 "--balance-batch cannot go with --dp-clip or --secure-aggregation (their noise and clipping assume "
                 "equal shares of the batch)");
  }
  check_pipeline_options(o);
  if (!o.timeline.empty()) {
    DAGR_ENFORCE(o.pipeline_parallel == 1, InputError,
                 "--timeline cannot be combined with --pipeline-parallel yet (it records the data-parallel loop)");
    const auto folder = std::filesystem::absolute(o.timeline).parent_path();
    DAGR_ENFORCE(std::filesystem::is_directory(folder) && access(folder.c_str(), W_OK | X_OK) == 0, InputError,
                 "--timeline ", o.timeline, ": cannot write in ", folder.string());
  }
  DAGR_ENFORCE(std::isfinite(o.bucket_cap_mb) && o.bucket_cap_mb > 0, InputError,
               "--bucket-cap-mb must be a finite number above 0, not ", o.bucket_cap_mb);
  DAGR_ENFORCE(!o.out.empty(), InputError, "--out must name a folder");
  std::error_code error;
  std::filesystem::create_directories(o.out, error);
  DAGR_ENFORCE(std::filesystem::is_directory(o.out), InputError, "--out ", o.out, ": not a folder and cannot be made one",
               error ? " (" + error.message() + ")" : std::string());
  DAGR_ENFORCE(access(o.out.c_str(), W_OK | X_OK) == 0, InputError, "--out ", o.out, ": cannot write there (",
               std::strerror(errno), ")");
}

// Whether an error means the group lost a rank (what --elastic recovers from).
bool group_failure(const std::exception& e) {
  return dynamic_cast<const PeerError*>(&e) || dynamic_cast<const TimeoutError*>(&e) ||
         std::strstr(e.what(), "communicator unusable after an earlier failure");
}

// The launcher's restart count (DAGR_RESTART_COUNT): a restarted run resumes.
int restart_count() {
  const char* text = std::getenv("DAGR_RESTART_COUNT");
  return text ? std::atoi(text) : 0;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

int run_training(const TrainOptions& o) {
  const auto start = Clock::now();
  check_options(o);
  if (o.pipeline_parallel > 1) return run_pipeline_training(o);
  // Keep libtorch's multi-MB temporaries in the heap instead of an mmap/munmap
  // per step (the anchors run with the same thresholds): +30 % for the CNN.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  set_compute_threads(o.threads);
  const data::ImageSet train = data::load_image_bytes(o.dataset, "train");  // normalised batch by batch
  const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
  // A standby worker (launched ahead for a restart) waits here for its rank.
  if (!wait_until_started()) return 0;
  const bool resume = o.resume || restart_count() > 0;
  Communicator comm = Communicator::from_env();
  if (o.mode == "ps") return run_ps_training(o, comm, train, test);
  int rank = comm.rank(), world = comm.size();
  torch::manual_seed(o.seed);
  // Tensor groups split the model; data groups split the samples (DDP reduces over them).
  ParallelGroups groups = make_parallel_groups(comm, o.tensor_parallel);
  if (!o.timeline.empty()) timeline::start(comm);  // --timeline: recorded until the end, written by rank 0
  Network net = make_network(o.model, o.hidden, o.depth, groups);
  const std::optional<TrainingCheckpoint> resumed = resume ? load_everywhere(comm, o.out) : std::nullopt;
  if (resumed) restore_model(net, o, *resumed);
  std::optional<DistributedDataParallel> ddp;  // re-made on a smaller group by elastic recovery
  DdpOptions ddp_options;
  if (o.secure_clip > 0) ddp_options.secure_aggregation = SecureAggregationOptions{.clip = static_cast<float>(o.secure_clip)};
  ddp_options.bucket_cap_bytes = static_cast<std::size_t>(o.bucket_cap_mb * (1 << 20));
  ddp_options.first_bucket_bytes = std::min(ddp_options.first_bucket_bytes, ddp_options.bucket_cap_bytes);
  ddp.emplace(net.module, groups.data, ddp_options);
  // --comm-hook (dagr/train/comm_hook.h); its state (PowerSGD's) is kept in the checkpoints.
  const std::shared_ptr<CommHook> comm_hook = make_comm_hook(o.comm_hook, o);
  if (comm_hook) {
    if (resumed) comm_hook->load_state(resumed->comm_hook);
    ddp->register_comm_hook(comm_hook);
  }
  auto optimizer = o.zero > 0 ? make_zero_optimizer(o, *ddp) : make_optimizer(o, *net.module);
  if (resumed) restore_optimizer(net, *optimizer, *resumed);
  Progress progress;
  progress.seed = resumed ? resumed->sampler_seed : o.seed;
  auto make_sampler = [&] {
    return DistributedSampler({.dataset_size = train.images.size(0), .rank = groups.data.rank(),
                               .world_size = groups.data.size(), .seed = progress.seed});
  };
  DistributedSampler sampler = make_sampler();
  std::int64_t per_rank = sampler.samples_per_rank(), data_ranks = groups.data.size();
  DAGR_ENFORCE(o.batch_size <= per_rank, InputError, "--batch-size ", o.batch_size, " is more than the ", per_rank,
               " samples each of the ", data_ranks, " data-parallel ranks trains on per epoch");
  // Per rank; --elastic recovery raises it so that the global batch stays the same.
  std::int64_t batch = o.batch_size;
  const std::int64_t global_batch = o.batch_size * data_ranks;
  std::int64_t steps = sampler.steps_per_epoch(batch);
  // --balance-batch: the step's samples (elements position·D to end·D of the
  // epoch's order, as an equal split's) shared by measured speed.
  std::optional<BatchBalancer> balancer;
  auto make_balancer = [&] {  // anew for each group (elastic recovery makes a smaller one)
    balancer.reset();
    if (o.balance_batch && data_ranks > 1) balancer.emplace(static_cast<int>(data_ranks));
  };
  make_balancer();

  // DP-SGD: the same on every rank but the noise key. A batch of the global
  // sample order is taken as a sample at rate q = global batch / N (the
  // accountant's assumption; see docs/DECISIONS.md on shuffling vs Poisson).
  const bool dp = o.dp_clip > 0;
  const double dp_q = static_cast<double>(global_batch) / static_cast<double>(train.images.size(0));
  const std::int64_t total_steps = o.max_steps > 0 ? std::min(o.max_steps, steps * o.epochs) : steps * o.epochs;
  const double dp_sigma = !dp ? 0 : o.dp_epsilon > 0 ? noise_for_epsilon(o.dp_epsilon, o.dp_delta, dp_q, total_steps)
                                                     : o.dp_noise;
  // The noise key: from --dp-noise-seed (every run draws the same noise), else
  // from the kernel's random source, never shown (nobody can recompute the noise).
  const std::uint64_t dp_key = o.dp_noise_seed >= 0 ? static_cast<std::uint64_t>(o.dp_noise_seed)
                                                    : (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^
                                                          std::random_device{}();
  torch::nn::Sequential dp_model{nullptr};
  if (dp) {
    auto sequential = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(net.module);
    DAGR_ENFORCE(sequential, InputError, "--dp-clip needs a built-in (Sequential) model");
    dp_model = torch::nn::Sequential(sequential);
  }
  const auto dp_spent = [&] { return dp_epsilon(dp_q, dp_sigma, progress.steps, o.dp_delta); };

  // Where to start: the checkpoint's global position p in its epoch's sample
  // order is local position p / D here (rank r takes the order's elements r,
  // r + D, …); the step count follows from it, so the learning-rate schedule
  // goes on where it was.
  std::int64_t first_position = 0;
  if (resumed) {
    progress.epoch = resumed->epoch;
    progress.metrics = resumed->metrics;
    const auto extra = nlohmann::json::parse(resumed->extra);
    for (int i = 0; i < 3; ++i) progress.epoch_sums[i] = extra.at("epoch_sums")[i];
    progress.test_accuracy = extra.at("test_accuracy");
    // Absent from checkpoints of older builds: then from the last metrics line's.
    const auto last_seconds = [&] {
      for (auto line = progress.metrics.rbegin(); line != progress.metrics.rend(); ++line) {
        const auto j = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
        if (j.is_object() && j.contains("seconds") && j["seconds"].is_number()) return j["seconds"].get<double>();
      }
      return 0.0;
    };
    progress.seconds = extra.contains("seconds") ? extra.at("seconds").get<double>() : last_seconds();
    first_position = resumed->samples_in_epoch / data_ranks;
    if (resumed->samples_in_epoch % data_ranks != 0 && rank == 0)
      std::printf("dagr train: sample %lld of the epoch is not a multiple of %lld ranks; %lld samples are trained twice\n",
                  static_cast<long long>(resumed->samples_in_epoch), static_cast<long long>(data_ranks),
                  static_cast<long long>(resumed->samples_in_epoch % data_ranks));
    progress.steps = (progress.epoch - 1) * steps + (first_position + o.batch_size - 1) / o.batch_size;
  }

  // This run's metrics go to metrics.jsonl.part, renamed to metrics.jsonl after
  // model.pt: a run that fails leaves the folder's last complete pair alone. A
  // fresh run removes the checkpoints of an earlier run in the folder, so that
  // --resume never continues a run other than the last one started there.
  const std::string metrics_path = o.out + "/metrics.jsonl", partial_metrics_path = metrics_path + ".part";
  std::ofstream metrics;
  if (rank == 0) {
    if (!resumed) remove_checkpoints(o.out);
    metrics.open(partial_metrics_path, std::ios::trunc);
    DAGR_ENFORCE(metrics, InputError, "cannot write ", partial_metrics_path);
    for (const std::string& line : progress.metrics) metrics << line << '\n';
    metrics.flush();
    std::printf("dagr train: %s on %lld samples, %d workers (tensor-parallel %d × data-parallel %d) × batch %lld, "
                "%s lr %g, %d epochs\n", o.model.c_str(), static_cast<long long>(train.images.size(0)), world,
                groups.tensor.size(), groups.data.size(), static_cast<long long>(o.batch_size), o.optimizer.c_str(),
                o.lr, o.epochs);
    if (dp)
      std::printf("dagr train: DP-SGD, clip %g, noise multiplier %.4f%s, sampling rate %.5f, %lld steps: "
                  "ε %.3f at δ %g at the end; noise %s\n", o.dp_clip, dp_sigma,
                  o.dp_epsilon > 0 ? " (chosen for --dp-epsilon)" : "", dp_q, static_cast<long long>(total_steps),
                  dp_epsilon(dp_q, dp_sigma, total_steps, o.dp_delta), o.dp_delta,
                  o.dp_noise_seed >= 0 ? "from --dp-noise-seed (reproducible)" : "keyed from /dev/urandom");
    if (resume && !resumed) std::printf("dagr train: no checkpoint in %s, starting from the beginning\n", o.out.c_str());
    if (resumed)
      std::printf("dagr train: continuing at epoch %lld, sample %lld of it (step %lld)\n",
                  static_cast<long long>(progress.epoch), static_cast<long long>(resumed->samples_in_epoch),
                  static_cast<long long>(progress.steps));
    std::fflush(stdout);
  }
  const auto train_start = Clock::now();
  // The metrics' time axis: seconds of training, across the processes of a
  // resumed or restarted run (from the checkpoint's figure on), less the time
  // the --eval-every evaluations took (they measure the run; they do not
  // stretch it). The time between a failure and the restart is not in it.
  double eval_s = 0;
  const double seconds_before = progress.seconds;
  const auto training_seconds = [&] { return seconds_before + seconds_since(train_start) - eval_s; };
  // Collective; rank 0 writes. `global_sums` are the epoch's sums so far.
  // The state is captured (cloned) here, on the training thread, and written
  // (serialised, fsynced, renamed) on a background thread while training goes
  // on; one write at a time, and the next capture waits for the last write.
  double checkpoint_s = 0;
  std::int64_t checkpoints = 0, last_checkpoint_steps = -1;
  std::future<void> writing;  // rank 0's checkpoint write in flight; get() rethrows its error
  auto finish_writing = [&] {
    if (writing.valid()) writing.get();
  };
  auto write_timeline = [&] {  // collective
    if (o.timeline.empty()) return;
    timeline::finish(comm, o.timeline);
    if (rank == 0) std::printf("Timeline (Chrome trace: ui.perfetto.dev, chrome://tracing) in %s\n", o.timeline.c_str());
  };
  auto checkpoint = [&](std::int64_t epoch, std::int64_t samples_in_epoch, const double (&local_sums)[3]) {
    if (progress.steps == last_checkpoint_steps) return;
    const auto t0 = Clock::now();
    double sums[3] = {local_sums[0], local_sums[1], local_sums[2]};
    comm.allreduce(std::span<double>(sums, 3));
    for (int i = 0; i < 3; ++i) progress.epoch_sums[i] += sums[i] / groups.tensor.size();
    progress.epoch = epoch;
    progress.samples_in_epoch = samples_in_epoch;
    progress.seconds = training_seconds();
    TrainingCheckpoint c = capture(net, *optimizer, progress);
    if (comm_hook) c.comm_hook = comm_hook->state(groups.data);
    for (int i = 0; i < 3; ++i) progress.epoch_sums[i] -= sums[i] / groups.tensor.size();
    if (rank == 0) {
      finish_writing();
      writing = std::async(std::launch::async, [dir = o.out, c = std::move(c)] { write_checkpoint(dir, c); });
    }
    last_checkpoint_steps = progress.steps;
    checkpoint_s += seconds_since(t0);
    ++checkpoints;
  };

  // Throughput counts training steps only, after kWarmup steps (as the anchors time it).
  constexpr std::int64_t kWarmup = 20;
  double first_step_s = -1, compute_s = 0, timed_s = 0;
  std::int64_t samples = 0, timed_samples = 0, run_steps = 0;
  const auto reached_max_steps = [&] { return o.max_steps > 0 && progress.steps >= o.max_steps; };
  // The optimizer state each rank holds, measured after the run's first step
  // (SGD's and Adam's state is made in it); with --zero, this rank's shard.
  auto report_optimizer_state = [&] {
    const double mine = static_cast<double>(optimizer_state_bytes(*optimizer));
    double sum = mine, most = mine;
    groups.data.allreduce(std::span<double>(&sum, 1), ReduceOp::sum);
    groups.data.allreduce(std::span<double>(&most, 1), ReduceOp::max);
    if (rank != 0) return;
    if (o.zero > 0)
      std::printf("dagr train: ZeRO-%d optimizer state: %.1f KiB on the largest rank, %.4f of the %.1f KiB the %d "
                  "data-parallel ranks hold together (plain DDP: all of it on every rank)\n", o.zero, most / 1024,
                  sum > 0 ? most / sum : 0.0, sum / 1024, groups.data.size());
    else
      std::printf("dagr train: optimizer state: %.1f KiB on every data-parallel rank (--zero shards it)\n", most / 1024);
    std::fflush(stdout);
  };
  std::int64_t first_epoch = progress.epoch;
  // A resumed or recovered run says when its first step is done (scripts/recovery_bench.sh reads it).
  std::optional<Clock::time_point> report_first_step;
  if (resume) report_first_step = Clock::now();

  // Elastic recovery (--elastic), after an error that means a rank was lost:
  // the survivors shrink the world to themselves (Communicator::shrink), new
  // rank 0 sends its state of the last completed step (model, optimizer,
  // position: the same on every survivor, since a failed step changes only
  // gradients), DDP is made anew on the smaller group, and the rest of the
  // epoch's sample order is spread over the survivors, each with a larger
  // batch so that the global batch (and so the run's steps and learning-rate
  // schedule) stays what it was.
  auto recover = [&](const std::string& why) {
    const auto t0 = Clock::now();
    ddp.reset();
    Communicator::Shrunk shrunk = comm.shrink(static_cast<std::uint64_t>(progress.steps));
    const int lost = world - shrunk.comm.size();
    comm = shrunk.comm;
    rank = comm.rank();
    world = comm.size();
    DAGR_ENFORCE(world >= o.min_workers, Error, "only ", world, " workers left, fewer than --min-workers ",
                 o.min_workers, " (after: ", why, ")");
    groups = make_parallel_groups(comm, 1);
    std::map<std::string, torch::Tensor> hook_state;  // over the survivors (collective), sent with rank 0's state
    if (comm_hook) hook_state = comm_hook->state(groups.data);
    std::int64_t size = 0;
    std::vector<std::uint8_t> bytes;
    if (rank == 0) {
      TrainingCheckpoint c = capture(net, *optimizer, progress);
      c.comm_hook = hook_state;
      bytes = encode_checkpoint(c);
      size = static_cast<std::int64_t>(bytes.size());
    }
    comm.broadcast(std::span<std::int64_t>(&size, 1), 0);
    bytes.resize(static_cast<std::size_t>(size));
    comm.broadcast(std::span<std::uint8_t>(bytes), 0);
    const TrainingCheckpoint state = decode_checkpoint(bytes, "new rank 0's state");
    restore_model(net, o, state);
    restore_optimizer(net, *optimizer, state);
    progress.epoch = state.epoch;
    progress.samples_in_epoch = state.samples_in_epoch;
    progress.steps = state.steps;
    progress.metrics = state.metrics;
    ddp.emplace(net.module, groups.data, ddp_options);
    if (comm_hook) {
      comm_hook->load_state(state.comm_hook);
      ddp->register_comm_hook(comm_hook);
    }
    sampler = make_sampler();
    per_rank = sampler.samples_per_rank();
    data_ranks = groups.data.size();
    batch = (global_batch + data_ranks - 1) / data_ranks;
    steps = sampler.steps_per_epoch(batch);
    make_balancer();
    if (progress.samples_in_epoch >= per_rank * data_ranks) {  // lost at the epoch's end: on to the next
      ++progress.epoch;
      progress.samples_in_epoch = 0;
    }
    first_epoch = progress.epoch;
    first_position = progress.samples_in_epoch / data_ranks;
    if (rank == 0 && !metrics.is_open()) {  // the old rank 0 is gone: this one writes the metrics now
      metrics.open(partial_metrics_path, std::ios::trunc);
      for (const std::string& line : progress.metrics) metrics << line << '\n';
    }
    if (rank == 0) {
      std::printf("dagr train: lost %d worker%s (%s); %d carry on, batch %lld each, from step %lld (epoch %lld, "
                  "sample %lld), regrouped in %.0f ms\n", lost, lost == 1 ? "" : "s", why.c_str(), world,
                  static_cast<long long>(batch), static_cast<long long>(progress.steps), static_cast<long long>(progress.epoch),
                  static_cast<long long>(progress.samples_in_epoch), 1e3 * seconds_since(t0));
      std::fflush(stdout);
    }
    report_first_step = t0;
  };

  for (bool done = false; !done;) try {
  for (std::int64_t epoch = first_epoch; epoch <= o.epochs && !reached_max_steps(); ++epoch) {
    sampler.set_epoch(epoch);
    const std::vector<std::int64_t>& order = sampler.indices();
    double sums[3] = {0, 0, 0};  // this rank's loss·samples, correct, samples this epoch
    double epoch_step_s = 0;     // this epoch's time in training steps on this rank
    std::int64_t epoch_samples = 0;  // the epoch's samples so far over D (each rank's with an equal split)
    std::int64_t position = epoch == first_epoch ? first_position : 0;
    while (position < per_rank && !reached_max_steps()) {
      const auto step_start = Clock::now();
      timeline::Span step_span("step");
      const std::int64_t end = std::min(per_rank, position + batch);
      const std::int64_t equal_share = end - position, window = equal_share * data_ranks;  // the step's samples, over D and all
      // This rank's samples of the step; balanced, they weigh n / window in DDP's average, not 1 / D.
      const BatchBalancer::Slice mine =
          balancer ? balancer->slice(groups.data.rank(), window) : BatchBalancer::Slice{0, equal_share};
      const std::int64_t* first = balancer ? sampler.epoch_order().data() + position * data_ranks + mine.begin
                                           : order.data() + position;
      const double waited_before = balancer ? ddp->stats().wait_seconds : 0;
      const auto idx = torch::from_blob(const_cast<std::int64_t*>(first), {mine.count}, torch::kInt64);
      const auto x = data::normalize_images(train.images, idx);
      const auto y = train.labels.index_select(0, idx);
      apply_schedule(*optimizer, o, progress.steps, o.max_steps > 0 ? o.max_steps : steps * o.epochs);
      clear_gradients(*optimizer);
      torch::Tensor logits, loss;
      if (dp) {
        // Per-example clipping, this rank's share of the noise, and the scale that
        // makes DDP's average (Σ clipped sums + noise) / global batch.
        std::optional<timeline::Span> span(std::in_place, "per-example gradients");
        ClippedBatch clipped = clip_per_example(dp_model, x, y, o.dp_clip);
        at::Generator noise = dp_noise_generator(dp_key, groups.data.rank(), progress.steps);
        add_noise_share(clipped.clipped_sum, dp_sigma * o.dp_clip, static_cast<int>(data_ranks), noise);
        for (auto& g : clipped.clipped_sum) g.mul_(static_cast<double>(data_ranks) / static_cast<double>(global_batch));
        span.emplace("backward");
        backward_with_gradients(*net.module, clipped.clipped_sum);
        logits = clipped.logits;
        loss = clipped.loss;
      } else {
        {
          timeline::Span span("forward");
          logits = net.forward(x);
          loss = torch::nn::functional::cross_entropy(logits, y);
        }
        timeline::Span span("backward");
        (balancer ? loss * BatchBalancer::loss_weight(mine.count, window, static_cast<int>(data_ranks)) : loss).backward();
      }
      const auto optimizer_start = Clock::now();
      {
        timeline::Span span("optimizer step");
        optimizer->step();
      }
      const double optimizer_s = seconds_since(optimizer_start);
      const double l = loss.item<double>();
      sums[0] += l * static_cast<double>(mine.count);
      sums[1] += static_cast<double>(correct_predictions(logits, y));
      sums[2] += static_cast<double>(mine.count);
      samples += equal_share;
      position = end;
      ++progress.steps;
      ++run_steps;
      if (run_steps == 1) report_optimizer_state();  // collective: every rank takes its first step together
      progress.epoch = epoch;
      progress.samples_in_epoch = position * data_ranks;
      if (report_first_step && rank == 0) {
        std::printf("dagr train: first step after %s done in %.0f ms, at %.3f (unix time)\n",
                    run_steps == 1 ? "resuming" : "recovery", 1e3 * seconds_since(*report_first_step), unix_seconds());
        std::fflush(stdout);
      }
      report_first_step.reset();
      const double step_s = seconds_since(step_start);
      compute_s += step_s;
      epoch_step_s += step_s;
      epoch_samples += equal_share;
      if (run_steps > kWarmup) {
        timed_s += step_s;
        timed_samples += equal_share;
      }
      if (balancer) {
        // The step's time less its wait for the others and the optimizer's fixed
        // part grows with the samples. At the end of each measurement period
        // rank 0 decides the next split from everyone's costs and its own step
        // time, and broadcasts it (one rounding for all, whatever each rank's build).
        const double waited = ddp->stats().wait_seconds - waited_before;
        balancer->record(mine.count, window, step_s - waited - optimizer_s, optimizer_s, step_s);
        if (balancer->due()) {
          const std::array<double, 2> measured = balancer->measurement();
          std::vector<double> everyone(2 * static_cast<std::size_t>(data_ranks));
          groups.data.allgather(std::span<const double>(measured), std::span<double>(everyone));
          std::vector<double> decision(static_cast<std::size_t>(data_ranks) + 1);
          if (groups.data.rank() == 0) decision = balancer->decide(everyone, batch * data_ranks);  // a whole step's window
          groups.data.broadcast(std::span<double>(decision), 0);
          balancer->adopt(decision);
        }
      }
      if (first_step_s < 0) {
        const double since_command = seconds_since_command_start();
        first_step_s = since_command >= 0 ? since_command : seconds_since(start);
      }
      if (rank == 0) show_progress(static_cast<int>(epoch), o.epochs, (position - 1) / batch, steps, l);
      // Before the checkpoint of the same step, which then holds its line. Not
      // at the epoch's end (nor where --max-steps ends it): that evaluates anyway.
      if (o.eval_every > 0 && progress.steps % o.eval_every == 0 && position < per_rank && !reached_max_steps()) {
        const auto eval_start = Clock::now();
        const double accuracy = evaluate(net, test.images, test.labels, groups, comm);
        eval_s += seconds_since(eval_start);
        const nlohmann::json line{
            {"step", progress.steps}, {"epoch", epoch}, {"test_accuracy", accuracy}, {"seconds", training_seconds()}};
        progress.metrics.push_back(line.dump());
        if (rank == 0) {
          std::printf("Step %lld: test accuracy %.4f (%.1f s)\n", static_cast<long long>(progress.steps), accuracy,
                      training_seconds());
          std::fflush(stdout);
          metrics << progress.metrics.back() << std::endl;
        }
      }
      if (o.checkpoint_every > 0 && progress.steps % o.checkpoint_every == 0 && position < per_rank)
        checkpoint(epoch, position * data_ranks, sums);
      if (o.stop_after_steps > 0 && progress.steps == o.stop_after_steps) {
        if (rank == 0) {
          std::printf("dagr train: stopped after step %lld (--stop-after-steps); continue with --resume\n",
                      static_cast<long long>(progress.steps));
          std::fflush(stdout);
        }
        finish_writing();
        write_timeline();
        comm.barrier();
        return 0;
      }
    }
    std::printf("Rank %d training loss: %.4f, training accuracy: %.4f\n", rank, sums[0] / std::max(sums[2], 1.0),
                sums[1] / std::max(sums[2], 1.0));
    std::fflush(stdout);
    double global[3] = {sums[0], sums[1], sums[2]};
    comm.allreduce(std::span<double>(global, 3));
    // Each rank's own mean loss, for the per-rank curves (src/cli/train_pictures.h).
    const double own_loss = sums[0] / std::max(sums[2], 1.0);
    std::vector<double> rank_loss(static_cast<std::size_t>(comm.size()));
    comm.allgather(std::span<const double>(&own_loss, 1), std::span<double>(rank_loss));
    for (int i = 0; i < 3; ++i) global[i] = global[i] / groups.tensor.size() + progress.epoch_sums[i];
    progress.test_accuracy = evaluate(net, test.images, test.labels, groups, comm);
    // Every rank keeps the metrics lines (rank 0 writes them): a survivor that
    // becomes rank 0 after --elastic recovery has the history.
    nlohmann::json line{{"epoch", epoch}, {"train_loss", global[0] / global[2]},
                        {"train_accuracy", global[1] / global[2]}, {"test_accuracy", progress.test_accuracy},
                        {"rank_train_loss", rank_loss}, {"seconds", training_seconds()}};
    // This epoch's throughput in training steps (as the summary's, but per epoch: after a
    // hook's warm-up, say), from this rank's step times; every data group trains its own samples.
    if (epoch_step_s > 0) line["samples_per_second"] = static_cast<double>(epoch_samples * groups.data.size()) / epoch_step_s;
    if (dp) line["dp_epsilon"] = dp_spent();
    progress.metrics.push_back(line.dump());
    if (rank == 0) {
      std::printf("Epoch %lld: global training loss %.4f, training accuracy %.4f, test accuracy %.4f (%.1f s)\n",
                  static_cast<long long>(epoch), global[0] / global[2], global[1] / global[2], progress.test_accuracy,
                  training_seconds());
      if (dp)
        std::printf("Epoch %lld: privacy spent ε = %.4f at δ = %g (σ %.4f, q %.5f, %lld steps)\n",
                    static_cast<long long>(epoch), dp_spent(), o.dp_delta, dp_sigma, dp_q,
                    static_cast<long long>(progress.steps));
      std::fflush(stdout);
      metrics << progress.metrics.back() << std::endl;
    }
    // The epoch's end (or where --max-steps stopped it): its figures are in the metrics now.
    const double none[3] = {0, 0, 0};
    for (double& s : progress.epoch_sums) s = 0;
    if (position == per_rank) checkpoint(epoch + 1, 0, none);
    else checkpoint(epoch, position * data_ranks, none);
  }
    done = true;
  } catch (const std::exception& e) {
    if (!o.elastic || !group_failure(e)) throw;
    recover(e.what());
  }
  const double train_s = seconds_since(train_start);
  const DdpStats stats = ddp->stats();
  auto dense = net.dense();  // the whole model, gathered from the tensor group
  // Every rank's wait per step for the gradients' averages, gathered (a
  // collective over all ranks): a synchronous step goes at its slowest rank's
  // pace, and that rank is the one that waits least; the others wait for it.
  const double wait_ms = 1e3 * stats.wait_seconds / std::max<std::int64_t>(stats.steps, 1);  // this rank's
  std::vector<double> waits(static_cast<std::size_t>(world), 0.0);
  waits[static_cast<std::size_t>(rank)] = wait_ms;
  comm.allreduce(std::span<double>(waits), ReduceOp::sum);
  finish_writing();
  if (rank == 0) {
    save_atomically(dense, o.out + "/model.pt");
    const double per_step_ms = 1e3 * compute_s / std::max<std::int64_t>(run_steps, 1);
    // Every data group trains its own samples (the ranks of a tensor group share theirs).
    const int groups_of_samples = groups.data.size();
    const double throughput = timed_s > 0    ? timed_samples * groups_of_samples / timed_s
                              : compute_s > 0 ? samples * groups_of_samples / compute_s
                                              : 0;
    // A resumed run that had already finished takes no step.
    char first_step[64] = "no training step in this run";
    if (first_step_s >= 0) std::snprintf(first_step, sizeof first_step, "first step after %.2f s", first_step_s);
    std::printf("Summary: %.2f s training (evaluation included), %.0f samples/s in training steps over %d workers, "
                "%s, test accuracy %.4f\n", train_s, throughput, world, first_step, progress.test_accuracy);
    std::printf("Per step (rank 0): %.3f ms, of which %.3f ms blocked on gradient communication; "
                "%lld of %lld buckets started during backward\n", per_step_ms, wait_ms,
                static_cast<long long>(stats.buckets_overlapped), static_cast<long long>(stats.steps * ddp->bucket_count()));
    if (groups.data.size() > 1) {  // DDP averaged over some group
      const auto least = std::min_element(waits.begin(), waits.end()), most = std::max_element(waits.begin(), waits.end());
      std::printf("Blocked on gradient communication per step: %.3f ms (rank %d) to %.3f ms (rank %d) over %d ranks; "
                  "the rank that waits least is the one the others wait for\n",
                  *least, static_cast<int>(least - waits.begin()), *most, static_cast<int>(most - waits.begin()), world);
    }
    if (balancer) {
      std::string shares;
      const std::vector<double>& kept = balancer->kept_shares();  // rank 0's: a trial in flight is not counted
      for (std::size_t r = 0; r < kept.size(); ++r)
        shares += detail::concat(r ? ", " : "", "rank ", r, " ", std::lround(1000 * kept[r]) / 10.0, " %");
      std::printf("Batch split by measured speed (--balance-batch): %s of each step's samples, the last split kept; "
                  "%lld splits tried, %lld of them undone as slower\n", shares.c_str(),
                  static_cast<long long>(balancer->trials()), static_cast<long long>(balancer->undone()));
    }
    if (comm_hook) {
      const auto* power = dynamic_cast<const PowerSgdHook*>(comm_hook.get());
      std::printf("Communication hook %s: %s\n", comm_hook->name().c_str(),
                  power ? detail::concat(power->sent_elements(), " numbers sent per step in the last step, of ",
                                         power->dense_elements(), " gradients").c_str()
                        : "16-bit gradients on the wire");
    }
    std::printf("Checkpoints: %lld, %.1f ms each on the training thread (written in the background)\n",
                static_cast<long long>(checkpoints),
                1e3 * checkpoint_s / std::max<std::int64_t>(checkpoints, 1));
    std::printf("Model saved to %s/model.pt, metrics in %s/metrics.jsonl\n", o.out.c_str(), o.out.c_str());
    nlohmann::json summary{{"summary", true}, {"seconds", train_s}, {"samples_per_second", throughput},
                           {"first_step_seconds", first_step_s >= 0 ? nlohmann::json(first_step_s) : nlohmann::json()},
                           {"test_accuracy", progress.test_accuracy},
                           {"step_ms", per_step_ms}, {"comm_wait_ms", wait_ms}, {"comm_wait_ms_by_rank", waits}};
    if (balancer) summary["batch_share_by_rank"] = balancer->kept_shares();
    metrics << summary.dump() << std::endl;
    metrics.close();
    std::filesystem::rename(partial_metrics_path, metrics_path);
  }
  write_timeline();
  comm.barrier();
  if (rank == 0 && o.on_finished) o.on_finished();
  if (rank == 0) std::printf("Training finished!\n");
  return 0;
}

}  // namespace dagr::train
