// One rank of `dagr train`, start to finish:
//   join the group → load the data set → build the model, wrap it in DDP →
//   each epoch: this rank's shard (DistributedSampler) in batches of b →
//   forward, loss, backward (DDP averages gradients as they are produced) →
//   optimizer step → per-rank and global figures, parallel test evaluation →
//   rank 0 saves the model atomically and writes metrics.
#include "trainer.h"

#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/train/compute_threads.h"
#include "dagr/train/ddp.h"
#include "dagr/train/sampler.h"
#include "network.h"

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
    return std::make_unique<torch::optim::SGD>(m.parameters(), torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  if (o.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(m.parameters(), torch::optim::AdamOptions(o.lr));
  throw InputError(detail::concat("unknown optimizer '", o.optimizer, "' (sgd, adam)"));
}

// A progress bar on a terminal; nothing otherwise (the epoch lines follow).
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

void save_atomically(torch::nn::Sequential model, const std::string& path) {
  const std::string tmp = path + ".tmp";
  torch::save(model, tmp);
  std::filesystem::rename(tmp, path);
}

}  // namespace

int run_training(const TrainOptions& o) {
  const auto start = Clock::now();
  DAGR_ENFORCE(o.epochs >= 1, InputError, "--epochs must be at least 1");
  DAGR_ENFORCE(o.batch_size >= 1, InputError, "--batch-size must be at least 1");
  DAGR_ENFORCE(o.threads >= 1, InputError, "--threads must be at least 1");
  DAGR_ENFORCE(o.schedule == "cosine" || o.schedule == "constant", InputError, "unknown schedule '", o.schedule,
               "' (cosine, constant)");
  // Keep libtorch's multi-MB temporaries in the heap instead of an mmap/munmap
  // per step (the anchors run with the same thresholds): +30 % for the CNN.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  set_compute_threads(o.threads);
  Communicator comm = Communicator::from_env();
  const int rank = comm.rank(), world = comm.size();
  torch::manual_seed(o.seed);

  const data::ImageSet train = data::load_image_set(o.dataset, "train");
  const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
  // Tensor groups split the model; data groups split the samples (DDP reduces over them).
  const ParallelGroups groups = make_parallel_groups(comm, o.tensor_parallel);
  Network net = make_network(o.model, o.hidden, groups);
  DistributedDataParallel ddp(net.module, groups.data);
  auto optimizer = make_optimizer(o, *net.module);
  DistributedSampler sampler({.dataset_size = train.images.size(0), .rank = groups.data.rank(),
                              .world_size = groups.data.size(), .seed = o.seed});
  const std::int64_t steps = sampler.steps_per_epoch(o.batch_size);

  std::ofstream metrics;
  if (rank == 0) {
    std::filesystem::create_directories(o.out);
    metrics.open(o.out + "/metrics.jsonl");
    DAGR_ENFORCE(metrics, InputError, "cannot write ", o.out, "/metrics.jsonl");
    std::printf("dagr train: %s on %lld samples, %d workers (tensor-parallel %d × data-parallel %d) × batch %lld, "
                "%s lr %g, %d epochs\n", o.model.c_str(), static_cast<long long>(train.images.size(0)), world,
                groups.tensor.size(), groups.data.size(), static_cast<long long>(o.batch_size), o.optimizer.c_str(),
                o.lr, o.epochs);
    std::fflush(stdout);
  }

  // Throughput counts training steps only, after kWarmup steps (as the anchors time it).
  constexpr std::int64_t kWarmup = 20;
  double first_step_s = -1, compute_s = 0, timed_s = 0, test_accuracy = 0;
  std::int64_t samples = 0, timed_samples = 0, total_steps = 0;
  const auto train_start = Clock::now();
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    sampler.set_epoch(epoch);
    double loss_sum = 0;
    std::int64_t correct = 0, seen = 0;
    for (std::int64_t step = 0; step < steps; ++step) {
      if (o.max_steps > 0 && total_steps == o.max_steps) break;
      const auto step_start = Clock::now();
      const auto batch = sampler.batch(step, o.batch_size);
      const auto idx = torch::from_blob(const_cast<std::int64_t*>(batch.data()), {static_cast<std::int64_t>(batch.size())}, torch::kInt64);
      const auto x = train.images.index_select(0, idx);
      const auto y = train.labels.index_select(0, idx);
      apply_schedule(*optimizer, o, total_steps, o.max_steps > 0 ? o.max_steps : steps * o.epochs);
      optimizer->zero_grad();
      const auto logits = net.forward(x);
      const auto loss = torch::nn::functional::cross_entropy(logits, y);
      loss.backward();
      optimizer->step();
      const double l = loss.item<double>();
      loss_sum += l * static_cast<double>(batch.size());
      correct += logits.argmax(1).eq(y).sum().item<std::int64_t>();
      seen += static_cast<std::int64_t>(batch.size());
      ++total_steps;
      const double step_s = seconds_since(step_start);
      compute_s += step_s;
      if (total_steps > kWarmup) {
        timed_s += step_s;
        timed_samples += static_cast<std::int64_t>(batch.size());
      }
      if (first_step_s < 0) {
        const double since_command = seconds_since_command_start();
        first_step_s = since_command >= 0 ? since_command : seconds_since(start);
      }
      if (rank == 0) show_progress(epoch, o.epochs, step, steps, l);
    }
    samples += seen;
    std::printf("Rank %d training loss: %.4f, training accuracy: %.4f\n", rank, loss_sum / seen,
                static_cast<double>(correct) / seen);
    std::fflush(stdout);
    double global[3] = {loss_sum, static_cast<double>(correct), static_cast<double>(seen)};
    comm.allreduce(std::span<double>(global, 3));
    test_accuracy = evaluate(net, test.images, test.labels, groups, comm);
    if (rank == 0) {
      std::printf("Epoch %d: global training loss %.4f, training accuracy %.4f, test accuracy %.4f (%.1f s)\n", epoch,
                  global[0] / global[2], global[1] / global[2], test_accuracy, seconds_since(train_start));
      std::fflush(stdout);
      metrics << nlohmann::json{{"epoch", epoch}, {"train_loss", global[0] / global[2]},
                                {"train_accuracy", global[1] / global[2]}, {"test_accuracy", test_accuracy},
                                {"seconds", seconds_since(train_start)}}.dump()
              << std::endl;
    }
    if (o.max_steps > 0 && total_steps == o.max_steps) break;
  }
  const double train_s = seconds_since(train_start);
  const DdpStats stats = ddp.stats();
  auto dense = net.dense();  // the whole model, gathered from the tensor group
  if (rank == 0) {
    save_atomically(dense, o.out + "/model.pt");
    const double per_step_ms = 1e3 * compute_s / std::max<std::int64_t>(total_steps, 1);
    const double wait_ms = 1e3 * stats.wait_seconds / std::max<std::int64_t>(stats.steps, 1);
    // Every data group trains its own samples (the ranks of a tensor group share theirs).
    const int groups_of_samples = groups.data.size();
    const double throughput = timed_s > 0 ? timed_samples * groups_of_samples / timed_s
                                          : samples * groups_of_samples / compute_s;
    std::printf("Summary: %.2f s training (evaluation included), %.0f samples/s in training steps over %d workers, "
                "first step after %.2f s, test accuracy %.4f\n", train_s, throughput, world, first_step_s, test_accuracy);
    std::printf("Per step (rank 0): %.3f ms, of which %.3f ms blocked on gradient communication; "
                "%lld of %lld buckets started during backward\n", per_step_ms, wait_ms,
                static_cast<long long>(stats.buckets_overlapped), static_cast<long long>(stats.steps * ddp.bucket_count()));
    std::printf("Model saved to %s/model.pt, metrics in %s/metrics.jsonl\n", o.out.c_str(), o.out.c_str());
    metrics << nlohmann::json{{"summary", true}, {"seconds", train_s}, {"samples_per_second", throughput},
                              {"first_step_seconds", first_step_s}, {"test_accuracy", test_accuracy},
                              {"step_ms", per_step_ms}, {"comm_wait_ms", wait_ms}}.dump()
            << std::endl;
  }
  comm.barrier();
  if (rank == 0) std::printf("Training finished!\n");
  return 0;
}

}  // namespace dagr::train
