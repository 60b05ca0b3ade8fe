// One rank of `dagr train --mode ps`, start to finish:
//   links (one pair group per server and worker, make_ps_links) → the model,
//   built from --seed on every rank →
//   server: its shard of the flat parameters and an optimizer over it; serve
//     until every worker is done or lost; the servers gather the dense model;
//     server 0 evaluates it on the whole test set, saves model.pt and writes
//     metrics.jsonl and staleness.csv;
//   worker: its shard of the samples (DistributedSampler over the W workers)
//     in batches of --batch-size → pull → each step: forward, loss, backward,
//     push the flat gradient and pull the parameters the servers grant next →
//     at each epoch's end: test accuracy on its share of the test set (every
//     W-th sample), reported with its next push.
// Server 0 turns the workers' reports into one metrics line per epoch once
// every worker still there has reported that epoch's test figures, and logs
// each push's staleness (worker, its push number, updates it was behind) in
// staleness.csv.
//
// Test hooks (environment): DAGR_PS_SLOW_WORKER="W:MS" makes worker W sleep MS
// ms before each push; DAGR_PS_KILL_WORKER="W:STEP" makes worker W kill
// itself with SIGKILL before its push STEP (as kill -9 would).
#include "ps_trainer.h"

#include <csignal>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <nlohmann/json.hpp>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/train/accuracy.h"
#include "dagr/train/fused_optimizers.h"
#include "dagr/train/parameter_server.h"
#include "dagr/train/sampler.h"

namespace dagr::train {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "W:N" from the environment variable `name`, or {-1, 0} when it is unset.
std::pair<int, long> worker_hook(const char* name) {
  const char* text = std::getenv(name);
  if (!text || !*text) return {-1, 0};
  int worker = -1;
  long value = -1;
  char tail = 0;
  DAGR_ENFORCE(std::sscanf(text, "%d:%ld%c", &worker, &value, &tail) == 2 && worker >= 0 && value >= 0, InputError,
               name, "='", text, "' is not WORKER:NUMBER");
  return {worker, value};
}

torch::Tensor flat_parameters(torch::nn::Module& m) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : m.parameters()) parts.push_back(p.detach().reshape(-1));
  return torch::cat(parts).contiguous();
}

torch::Tensor flat_gradient(torch::nn::Module& m) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : m.parameters()) parts.push_back(p.grad().reshape(-1));
  return torch::cat(parts).contiguous();
}

void load_flat(torch::nn::Module& m, const torch::Tensor& flat) {
  torch::NoGradGuard no_grad;
  std::int64_t at = 0;
  for (auto& p : m.parameters()) {
    p.copy_(flat.narrow(0, at, p.numel()).view_as(p));
    at += p.numel();
  }
}

// Correct answers and samples over images[first::stride].
std::pair<double, double> count_correct(torch::nn::Sequential& model, const data::ImageSet& test, std::int64_t first,
                                        std::int64_t stride) {
  torch::NoGradGuard no_grad;
  const auto idx = torch::arange(first, test.images.size(0), stride);
  double correct = 0;
  for (std::int64_t i = 0; i < idx.numel(); i += 1000) {
    const auto part = idx.narrow(0, i, std::min<std::int64_t>(1000, idx.numel() - i));
    correct += static_cast<double>(
        correct_predictions(model->forward(test.images.index_select(0, part)), test.labels.index_select(0, part)));
  }
  return {correct, static_cast<double>(idx.numel())};
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o, std::vector<torch::Tensor> params) {
  if (o.optimizer == "sgd")
    return std::make_unique<FusedSgd>(params, torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  return std::make_unique<FusedAdam>(params, torch::optim::AdamOptions(o.lr));
}

// Server 0's view of the run: the workers' reports, turned into metrics lines.
class Figures {
 public:
  Figures(const TrainOptions& o, int workers, Clock::time_point start)
      : o_(o), workers_(workers), start_(start), pushes_(static_cast<std::size_t>(workers)) {
    metrics_.open(o.out + "/metrics.jsonl.part", std::ios::trunc);
    DAGR_ENFORCE(metrics_, InputError, "cannot write ", o.out, "/metrics.jsonl.part");
    staleness_.open(o.out + "/staleness.csv", std::ios::trunc);
    DAGR_ENFORCE(staleness_, InputError, "cannot write ", o.out, "/staleness.csv");
    staleness_ << "worker,push,staleness\n";
  }

  void report(int w, const PsReport& r) {
    if (r.samples > 0) {
      Epoch& e = epochs_[r.epoch];
      e.loss += r.loss_sum;
      e.correct += r.correct;
      e.samples += r.samples;
      e.worker_loss[w] += r.loss_sum;
      e.worker_samples[w] += r.samples;
      samples_ += r.samples;
    }
    if (r.staleness >= 0) {
      staleness_ << w << ',' << ++pushes_[static_cast<std::size_t>(w)] << ',' << r.staleness << '\n';
      max_staleness_ = std::max(max_staleness_, r.staleness);
      Epoch& e = epochs_[r.epoch];
      e.max_staleness = std::max(e.max_staleness, r.staleness);
    }
    if (r.evaluated_epoch > 0) {
      Epoch& e = epochs_[r.evaluated_epoch];
      e.test_correct += r.test_correct;
      e.test_samples += r.test_samples;
      e.evaluated.insert(w);
    }
    emit_ready();
  }

  void lost(int w, const std::string& why) {
    lost_.insert(w);
    std::printf("dagr train: worker %d lost, %d of %d carry on (its link to server 0: %s)\n", w,
                workers_ - static_cast<int>(lost_.size()), workers_, why.c_str());
    std::fflush(stdout);
    emit_ready();
  }

  // The run's end: the lines of epochs some worker did not evaluate, then the summary.
  void finish(double test_accuracy, const PsServerStats& stats) {
    for (auto& [number, e] : epochs_)
      if (number >= next_) emit(number, e);
    const double seconds = seconds_since(start_);
    const double throughput = samples_ / std::max(seconds, 1e-9);
    std::printf("Summary: %.2f s training (evaluation included), %.0f samples/s over %d workers, test accuracy %.4f, "
                "%lld updates, max staleness %lld, %lld pulls held back, %zu workers lost\n",
                seconds, throughput, workers_, test_accuracy, static_cast<long long>(stats.updates),
                static_cast<long long>(max_staleness_), static_cast<long long>(stats.held_back), lost_.size());
    metrics_ << nlohmann::json{{"summary", true}, {"mode", "ps"}, {"seconds", seconds},
                               {"samples_per_second", throughput}, {"test_accuracy", test_accuracy},
                               {"updates", stats.updates}, {"max_staleness", max_staleness_},
                               {"held_back", stats.held_back}, {"lost_workers", lost_.size()}}.dump()
             << std::endl;
    metrics_.close();
    staleness_.close();
    std::filesystem::rename(o_.out + "/metrics.jsonl.part", o_.out + "/metrics.jsonl");
  }

 private:
  struct Epoch {
    double loss = 0, correct = 0, samples = 0, test_correct = 0, test_samples = 0;
    std::map<int, double> worker_loss, worker_samples;
    std::set<int> evaluated;
    std::int64_t max_staleness = 0;
  };

  void emit_ready() {
    for (auto it = epochs_.find(next_); it != epochs_.end(); it = epochs_.find(next_)) {
      for (int w = 0; w < workers_; ++w)
        if (!it->second.evaluated.count(w) && !lost_.count(w)) return;
      emit(next_, it->second);
    }
  }

  void emit(std::int64_t number, const Epoch& e) {
    std::vector<double> worker_loss;
    for (const auto& [w, loss] : e.worker_loss) worker_loss.push_back(loss / e.worker_samples.at(w));
    const double loss = e.loss / std::max(e.samples, 1.0), accuracy = e.correct / std::max(e.samples, 1.0);
    const double test = e.test_correct / std::max(e.test_samples, 1.0);
    metrics_ << nlohmann::json{{"epoch", number}, {"train_loss", loss}, {"train_accuracy", accuracy},
                               {"test_accuracy", test}, {"rank_train_loss", worker_loss},
                               {"max_staleness", e.max_staleness}, {"seconds", seconds_since(start_)}}.dump()
             << std::endl;
    std::printf("Epoch %lld: global training loss %.4f, training accuracy %.4f, test accuracy %.4f (%.1f s), "
                "max staleness %lld\n", static_cast<long long>(number), loss, accuracy, test,
                seconds_since(start_), static_cast<long long>(e.max_staleness));
    std::fflush(stdout);
    next_ = number + 1;
  }

  const TrainOptions& o_;
  int workers_;
  Clock::time_point start_;
  std::ofstream metrics_, staleness_;
  std::map<std::int64_t, Epoch> epochs_;
  std::int64_t next_ = 1;
  std::set<int> lost_;
  std::vector<std::int64_t> pushes_;
  std::int64_t max_staleness_ = 0;
  double samples_ = 0;
};

// `schedule_steps`: the steps the learning-rate schedule spans (as in DDP mode).
int run_server(const TrainOptions& o, PsLinks& links, torch::nn::Sequential& model, const data::ImageSet& test,
               std::int64_t schedule_steps) {
  const torch::Tensor flat = flat_parameters(*model);
  const auto shards = ps_shards(flat.numel(), links.servers);
  const PsShard mine = shards[static_cast<std::size_t>(links.index)];
  const bool chief = links.index == 0;
  const auto start = Clock::now();
  std::optional<Figures> figures;
  if (chief) {
    figures.emplace(o, links.workers, start);
    std::printf("dagr train: %s, parameter server: %d server%s + %d workers × batch %lld, %s, %s lr %g, %d epochs\n",
                o.model.c_str(), links.servers, links.servers == 1 ? "" : "s", links.workers,
                static_cast<long long>(o.batch_size),
                o.ps_async ? ("asynchronous, staleness ≤ " + std::to_string(o.staleness)).c_str() : "synchronous",
                o.optimizer.c_str(), o.lr, o.epochs);
    std::fflush(stdout);
  }
  PsServerOptions options;
  options.staleness = o.ps_async ? o.staleness : -1;
  // The learning rate follows the workers' steps: one update per step in
  // synchronous mode, W pushes per step of each worker in asynchronous mode.
  const std::int64_t per_step = o.ps_async ? links.workers : 1;
  options.before_update = [&o, per_step, schedule_steps](torch::optim::Optimizer& opt, std::int64_t update) {
    if (o.schedule == "constant") return;
    const double t = static_cast<double>(update / per_step) / static_cast<double>(schedule_steps);
    for (auto& group : opt.param_groups()) group.options().set_lr(o.lr * 0.5 * (1.0 + std::cos(M_PI * t)));
  };
  if (chief) {
    options.on_report = [&figures](int w, const PsReport& r) { figures->report(w, r); };
    options.on_lost = [&figures](int w, const std::string& why) { figures->lost(w, why); };
  }
  ParameterServer server(links.peers, flat.narrow(0, mine.begin, mine.size()).clone(),
                         [&o](std::vector<torch::Tensor> p) { return make_optimizer(o, std::move(p)); }, options);
  server.serve();

  // The dense model: every server's shard, padded to the largest (the last), gathered on all servers.
  Communicator& group = *links.server_group;
  const std::int64_t block = shards.back().size();  // the largest shard
  std::vector<float> all(static_cast<std::size_t>(block * links.servers)), own(static_cast<std::size_t>(block));
  std::memcpy(own.data(), server.shard().data_ptr<float>(), static_cast<std::size_t>(mine.size()) * sizeof(float));
  group.allgather(std::span<const float>(own), std::span<float>(all));
  if (chief) {
    torch::Tensor dense = torch::empty({flat.numel()}, torch::kFloat32);
    for (std::size_t s = 0; s < shards.size(); ++s)
      std::memcpy(dense.data_ptr<float>() + shards[s].begin, all.data() + s * static_cast<std::size_t>(block),
                  static_cast<std::size_t>(shards[s].size()) * sizeof(float));
    load_flat(*model, dense);
    model->eval();
    const auto [correct, samples] = count_correct(model, test, 0, 1);
    const std::string path = o.out + "/model.pt";
    torch::save(model, path + ".tmp");
    std::filesystem::rename(path + ".tmp", path);
    figures->finish(correct / samples, server.stats());
    std::printf("Model saved to %s/model.pt, metrics in %s/metrics.jsonl, staleness per push in %s/staleness.csv\n",
                o.out.c_str(), o.out.c_str(), o.out.c_str());
    if (o.on_finished) o.on_finished();
    std::printf("Training finished!\n");
    std::fflush(stdout);
  }
  group.barrier();
  return 0;
}

int run_worker(const TrainOptions& o, PsLinks& links, torch::nn::Sequential& model, const data::ImageSet& train,
               const data::ImageSet& test, std::int64_t total_steps) {
  const auto [slow_worker, slow_ms] = worker_hook("DAGR_PS_SLOW_WORKER");
  const auto [kill_worker, kill_step] = worker_hook("DAGR_PS_KILL_WORKER");
  const int me = links.index;
  DistributedSampler sampler({.dataset_size = train.images.size(0), .rank = me, .world_size = links.workers,
                              .seed = o.seed});
  const std::int64_t per_rank = sampler.samples_per_rank();
  torch::Tensor flat = flat_parameters(*model);
  const auto shards = ps_shards(flat.numel(), links.servers);
  ParameterClient client(links.peers, shards);
  client.pull(flat);
  load_flat(*model, flat);
  PsReport pending;  // the test figures of the epoch just ended, sent with the next message
  std::int64_t steps = 0, staleness = -1;
  auto evaluate = [&](std::int64_t epoch) {
    model->eval();
    const auto [correct, samples] = count_correct(model, test, me, links.workers);
    model->train();
    pending.evaluated_epoch = epoch;
    pending.test_correct = correct;
    pending.test_samples = samples;
  };
  std::int64_t epoch = 1;
  for (; epoch <= o.epochs && steps < total_steps; ++epoch) {
    sampler.set_epoch(epoch);
    const std::vector<std::int64_t>& order = sampler.indices();
    for (std::int64_t position = 0; position < per_rank && steps < total_steps;) {
      const std::int64_t end = std::min(per_rank, position + o.batch_size);
      const auto idx =
          torch::from_blob(const_cast<std::int64_t*>(order.data() + position), {end - position}, torch::kInt64);
      const auto x = data::normalize_images(train.images, idx);
      const auto y = train.labels.index_select(0, idx);
      model->zero_grad();
      const auto logits = model->forward(x);
      const auto loss = torch::nn::functional::cross_entropy(logits, y);
      loss.backward();
      PsReport report = pending;
      pending = {};
      report.epoch = epoch;
      report.step = ++steps;
      report.samples = static_cast<double>(end - position);
      report.loss_sum = loss.item<double>() * report.samples;
      report.correct = static_cast<double>(correct_predictions(logits, y));
      report.staleness = staleness;
      if (me == slow_worker) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
      if (me == kill_worker && steps == kill_step) raise(SIGKILL);
      staleness = client.push_pull(flat_gradient(*model), report, flat);
      load_flat(*model, flat);
      position = end;
    }
    evaluate(epoch);
  }
  PsReport last = pending;
  last.epoch = epoch - 1;
  last.staleness = staleness;
  client.finish(last);
  return 0;
}

}  // namespace

void check_ps_options(const TrainOptions& o) {
  DAGR_ENFORCE(o.mode == "ddp" || o.mode == "ps", InputError, "unknown --mode '", o.mode, "' (ddp, ps)");
  if (o.mode != "ps") {
    DAGR_ENFORCE(o.servers == 0, InputError, "--servers needs --mode ps");
    DAGR_ENFORCE(!o.ps_async, InputError, "--async needs --mode ps");
    DAGR_ENFORCE(o.staleness < 0, InputError, "--staleness needs --mode ps --async");
    return;
  }
  DAGR_ENFORCE(o.servers >= 1, InputError, "--mode ps needs --servers S (at least 1)");
  DAGR_ENFORCE(o.ps_async || o.staleness < 0, InputError,
               "--staleness needs --async (a synchronous parameter server applies no stale gradient)");
  DAGR_ENFORCE(!o.ps_async || o.staleness >= 0, InputError, "--async needs --staleness K (K ≥ 0)");
  const std::pair<bool, const char*> refused[] = {
      {o.tensor_parallel != 1, "--tensor-parallel"}, {o.elastic, "--elastic (asynchronous --mode ps drops a lost "
                                                                 "worker by itself)"},
      {o.resume, "--resume"}, {o.max_restarts > 0, "--max-restarts"}, {o.checkpoint_every > 0, "--checkpoint-every"},
      {o.eval_every > 0, "--eval-every"},
      {o.stop_after_steps > 0, "--stop-after-steps"}, {o.dp_clip > 0, "--dp-clip"},
      {o.secure_clip > 0, "--secure-aggregation"}, {o.pipeline_parallel != 1, "--pipeline-parallel"},
      {o.comm_hook != "none", "--comm-hook (the pushes are plain float32)"},
      {!o.timeline.empty(), "--timeline"}};
  for (const auto& [given, flag] : refused)
    DAGR_ENFORCE(!given, InputError, "--mode ps does not take ", flag);
}

int run_ps_training(const TrainOptions& o, Communicator& world, const data::ImageSet& train,
                    const data::ImageSet& test) {
  DAGR_ENFORCE(world.backend_name() == "shm", InputError, "--mode ps runs on the shared-memory backend (one host), "
               "not on ", world.backend_name());
  DAGR_ENFORCE(o.servers < world.size(), InputError, "--servers ", o.servers, " must be below the number of workers ",
               world.size(), " (servers and workers are all ranks of the job)");
  torch::manual_seed(o.seed);
  torch::nn::Sequential model = models::make_model(o.model, o.hidden, o.depth);
  PsLinks links = make_ps_links(world, o.servers);
  DistributedSampler sampler({.dataset_size = train.images.size(0), .rank = 0, .world_size = links.workers,
                              .seed = o.seed});
  DAGR_ENFORCE(o.batch_size <= sampler.samples_per_rank(), InputError, "--batch-size ", o.batch_size,
               " is more than the ", sampler.samples_per_rank(), " samples each of the ", links.workers,
               " workers trains on per epoch");
  const std::int64_t per_epoch = sampler.steps_per_epoch(o.batch_size);
  const std::int64_t total = o.max_steps > 0 ? std::min(o.max_steps, per_epoch * o.epochs) : per_epoch * o.epochs;
  return links.server ? run_server(o, links, model, test, o.max_steps > 0 ? o.max_steps : per_epoch * o.epochs)
                      : run_worker(o, links, model, train, test, total);
}

}  // namespace dagr::train
