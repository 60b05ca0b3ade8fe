// The parameter server (dagr/train/parameter_server.h) with ranks as threads:
// synchronous mode equals DDP; asynchronous mode keeps every push within the
// staleness bound with a deliberately slow worker and still learns; a worker
// that leaves is dropped (asynchronous) or is an error (synchronous).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "dagr/error.h"
#include "dagr/train/ddp.h"
#include "dagr/train/parameter_server.h"
#include "rank_threads.h"

namespace {

using dagr::Communicator;
using dagr::testing::run_ranks;

// A small classifier: 3 classes of Gaussian blobs in 8 dimensions.
torch::nn::Sequential make_net() {
  return torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::ReLU(), torch::nn::Linear(16, 3));
}

struct Data {
  torch::Tensor x, y;
};

Data blobs(std::int64_t n, std::uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor centres = torch::randn({3, 8}) * 2;
  torch::Tensor y = torch::randint(0, 3, {n}, torch::kInt64);
  return {centres.index_select(0, y) + torch::randn({n, 8}), y};
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

// A copy of `initial` (built once: torch's generator is global, the threads must not draw from it).
torch::nn::Sequential copy_of(const torch::Tensor& initial) {
  static std::mutex construct;
  std::lock_guard lock(construct);
  auto net = make_net();
  load_flat(*net, initial);
  return net;
}

std::unique_ptr<torch::optim::Optimizer> adam(std::vector<torch::Tensor> p) {
  return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(0.01));
}

// Worker w's batch at step t: rows of the data set, distinct across workers and steps.
Data batch_of(const Data& d, int w, int workers, int t, std::int64_t b) {
  const std::int64_t start = ((static_cast<std::int64_t>(t) * workers + w) * b) % (d.x.size(0) - b + 1);
  return {d.x.narrow(0, start, b), d.y.narrow(0, start, b)};
}

double loss_of(torch::nn::Sequential& net, const Data& d) {
  torch::NoGradGuard no_grad;
  return torch::nn::functional::cross_entropy(net->forward(d.x), d.y).item<double>();
}

double accuracy_of(torch::nn::Sequential& net, const Data& d) {
  torch::NoGradGuard no_grad;
  return net->forward(d.x).argmax(1).eq(d.y).to(torch::kFloat64).mean().item<double>();
}

// The servers' shards put together (on server 0; the other servers return an undefined tensor).
torch::Tensor gather_dense(dagr::PsLinks& links, dagr::ParameterServer& server, std::int64_t n) {
  const auto shards = dagr::ps_shards(n, links.servers);
  const std::int64_t block = shards.back().size();  // the largest shard
  std::vector<float> own(static_cast<std::size_t>(block)), all(static_cast<std::size_t>(block * links.servers));
  const auto mine = shards[static_cast<std::size_t>(links.index)];
  std::memcpy(own.data(), server.shard().data_ptr<float>(), static_cast<std::size_t>(mine.size()) * sizeof(float));
  links.server_group->allgather(std::span<const float>(own), std::span<float>(all));
  if (links.index != 0) return {};
  torch::Tensor dense = torch::empty({n});
  for (std::size_t s = 0; s < shards.size(); ++s)
    std::memcpy(dense.data_ptr<float>() + shards[s].begin, all.data() + s * static_cast<std::size_t>(block),
                static_cast<std::size_t>(shards[s].size()) * sizeof(float));
  return dense;
}

TEST(ParameterServer, ShardsCoverTheParametersInNearEqualParts) {
  const auto shards = dagr::ps_shards(10, 3);
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(shards[0].begin, 0);
  EXPECT_EQ(shards[2].end, 10);
  for (std::size_t s = 0; s + 1 < shards.size(); ++s) EXPECT_EQ(shards[s].end, shards[s + 1].begin);
  for (const auto& s : shards) EXPECT_TRUE(s.size() == 3 || s.size() == 4);
  EXPECT_THROW(dagr::ps_shards(2, 3), dagr::InputError);
}

TEST(ParameterServer, ServersMustLeaveAWorker) {
  std::atomic<int> refused{0};
  run_ranks(2, [&](Communicator& world) {
    try {
      dagr::make_ps_links(world, 2);
    } catch (const dagr::InputError&) {
      ++refused;
    }
  });
  EXPECT_EQ(refused.load(), 2);
}

// Synchronous PS (S servers, W workers, Adam on the servers' shards) against
// DDP over W ranks with the same batches: equal after kSteps steps within
// 1e-6 (both average as ReduceOp::avg does: a sum in rank order, one division).
void expect_sync_equals_ddp(int servers, int workers) {
  constexpr int kSteps = 6;
  constexpr std::int64_t kBatch = 16;
  const Data data = blobs(512, 1);
  torch::manual_seed(7);
  const torch::Tensor initial = flat_parameters(*make_net());
  const std::int64_t n = initial.numel();

  torch::Tensor ddp_result;
  run_ranks(workers, [&](Communicator& comm) {
    auto net = copy_of(initial);
    dagr::DistributedDataParallel ddp(net, comm);
    auto optimizer = adam(net->parameters());
    for (int t = 0; t < kSteps; ++t) {
      const Data b = batch_of(data, comm.rank(), workers, t, kBatch);
      optimizer->zero_grad();
      torch::nn::functional::cross_entropy(net->forward(b.x), b.y).backward();
      optimizer->step();
    }
    if (comm.rank() == 0) ddp_result = flat_parameters(*net);
  });

  torch::Tensor ps_result;
  std::vector<std::int64_t> staleness;
  std::mutex mutex;
  run_ranks(servers + workers, [&](Communicator& world) {
    dagr::PsLinks links = dagr::make_ps_links(world, servers);
    const auto shards = dagr::ps_shards(n, servers);
    if (links.server) {
      const auto mine = shards[static_cast<std::size_t>(links.index)];
      dagr::ParameterServer server(links.peers, initial.narrow(0, mine.begin, mine.size()).clone(), adam, {});
      server.serve();
      EXPECT_EQ(server.stats().updates, kSteps);
      auto dense = gather_dense(links, server, n);
      if (links.index == 0) ps_result = dense;
      return;
    }
    auto net = copy_of(initial);
    dagr::ParameterClient client(links.peers, shards);
    torch::Tensor flat = torch::empty({n});
    client.pull(flat);
    load_flat(*net, flat);
    for (int t = 0; t < kSteps; ++t) {
      const Data b = batch_of(data, links.index, workers, t, kBatch);
      net->zero_grad();
      torch::nn::functional::cross_entropy(net->forward(b.x), b.y).backward();
      const auto s = client.push_pull(flat_gradient(*net), {.epoch = 1, .step = t + 1}, flat);
      load_flat(*net, flat);
      std::lock_guard lock(mutex);
      staleness.push_back(s);
    }
    client.finish({});
  });
  ASSERT_TRUE(ddp_result.defined() && ps_result.defined());
  EXPECT_FALSE(torch::equal(ps_result, initial)) << "the parameters never moved";
  const double diff = (ps_result - ddp_result).abs().max().item<double>();
  EXPECT_LE(diff, 1e-6) << servers << " servers, " << workers << " workers";
  for (auto s : staleness) EXPECT_EQ(s, 0);
}

TEST(ParameterServer, SynchronousEqualsDdpOneServerTwoWorkers) { expect_sync_equals_ddp(1, 2); }
TEST(ParameterServer, SynchronousEqualsDdpTwoServersThreeWorkers) { expect_sync_equals_ddp(2, 3); }

struct AsyncOutcome {
  std::int64_t max_server_staleness = -1, max_worker_staleness = -1, held_back = 0;
  std::vector<int> lost;
  std::vector<int> steps_done;
  double loss_before = 0, loss_after = 0, accuracy_after = 0;
};

// W workers, worker `slow` sleeps slow_ms before each push; worker `leaver`
// (if ≥ 0) leaves without a word after 3 steps (its links destroyed).
AsyncOutcome run_async(int servers, int workers, int bound, int slow, int slow_ms, int steps, int leaver = -1) {
  constexpr std::int64_t kBatch = 16;
  const Data data = blobs(1024, 2), held_out = blobs(300, 2);
  torch::manual_seed(8);
  const torch::Tensor initial = flat_parameters(*make_net());
  const std::int64_t n = initial.numel();
  AsyncOutcome out;
  out.steps_done.assign(static_cast<std::size_t>(workers), 0);
  {
    auto net = copy_of(initial);
    out.loss_before = loss_of(net, held_out);
  }
  std::mutex mutex;
  run_ranks(servers + workers, [&](Communicator& world) {
    dagr::PsLinks links = dagr::make_ps_links(world, servers);
    const auto shards = dagr::ps_shards(n, servers);
    if (links.server) {
      const auto mine = shards[static_cast<std::size_t>(links.index)];
      dagr::ParameterServer server(links.peers, initial.narrow(0, mine.begin, mine.size()).clone(),
                                   [](std::vector<torch::Tensor> p) {
                                     return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.05));
                                   },
                                   {.staleness = bound});
      server.serve();
      const auto stats = server.stats();
      auto dense = gather_dense(links, server, n);
      std::lock_guard lock(mutex);
      out.max_server_staleness = std::max(out.max_server_staleness, stats.max_staleness);
      out.held_back += stats.held_back;
      if (links.index == 0) {
        out.lost = stats.lost;
        auto net = copy_of(dense);
        out.loss_after = loss_of(net, held_out);
        out.accuracy_after = accuracy_of(net, held_out);
      }
      return;
    }
    auto net = copy_of(initial);
    std::optional<dagr::ParameterClient> client;
    client.emplace(links.peers, shards);
    torch::Tensor flat = torch::empty({n});
    client->pull(flat);
    load_flat(*net, flat);
    for (int t = 0; t < steps; ++t) {
      if (links.index == leaver && t == 3) {  // gone without finish(): the servers see it leave
        client.reset();
        links.peers.clear();
        return;
      }
      const Data b = batch_of(data, links.index, workers, t, kBatch);
      net->zero_grad();
      torch::nn::functional::cross_entropy(net->forward(b.x), b.y).backward();
      if (links.index == slow) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
      const auto s = client->push_pull(flat_gradient(*net), {.epoch = 1, .step = t + 1}, flat);
      load_flat(*net, flat);
      std::lock_guard lock(mutex);
      out.max_worker_staleness = std::max(out.max_worker_staleness, s);
      ++out.steps_done[static_cast<std::size_t>(links.index)];
    }
    client->finish({});
  });
  return out;
}

// A slow worker (20 ms per step beside ~0.1 ms) under bound K = 2: no push
// is applied more than 2 updates late, on the servers or as the workers see
// it; the bound is reached (pulls held back), so it is what limits the fast
// workers; every worker takes all its steps and the model learns.
TEST(ParameterServer, AsynchronousSlowWorkerStaysWithinTheBound) {
  constexpr int kBound = 2;
  const AsyncOutcome o = run_async(2, 3, kBound, /*slow=*/2, /*slow_ms=*/20, /*steps=*/40);
  EXPECT_LE(o.max_server_staleness, kBound);
  EXPECT_LE(o.max_worker_staleness, kBound);
  EXPECT_EQ(o.max_server_staleness, kBound) << "the slow worker never fell behind: the test shows nothing";
  EXPECT_GT(o.held_back, 0);
  for (int s : o.steps_done) EXPECT_EQ(s, 40);
  EXPECT_TRUE(o.lost.empty());
  EXPECT_LT(o.loss_after, 0.5 * o.loss_before) << o.loss_before << " -> " << o.loss_after;
  EXPECT_GE(o.accuracy_after, 0.9);
}

// The control: with a loose bound the same slow worker's pushes come many
// updates late (so the test above fails if the bound is not enforced).
TEST(ParameterServer, AsynchronousLooseBoundLetsTheSlowWorkerFallBehind) {
  const AsyncOutcome o = run_async(1, 3, /*bound=*/1000, /*slow=*/2, /*slow_ms=*/20, /*steps=*/20);
  EXPECT_GT(o.max_server_staleness, 4);
  EXPECT_EQ(o.held_back, 0);
}

// K = 0: the workers take turns, every gradient is computed on the current parameters.
TEST(ParameterServer, AsynchronousBoundZeroSerialisesTheWorkers) {
  const AsyncOutcome o = run_async(1, 2, 0, /*slow=*/1, /*slow_ms=*/2, /*steps=*/15);
  EXPECT_EQ(o.max_server_staleness, 0);
  EXPECT_EQ(o.max_worker_staleness, 0);
}

// A worker that leaves mid-run (its communicators destroyed, no finish) is
// dropped by every server; the others carry on to their last step.
TEST(ParameterServer, AsynchronousDropsAWorkerThatLeaves) {
  const AsyncOutcome o = run_async(2, 3, 2, /*slow=*/-1, 0, /*steps=*/30, /*leaver=*/1);
  EXPECT_EQ(o.lost, std::vector<int>{1});
  EXPECT_EQ(o.steps_done[0], 30);
  EXPECT_EQ(o.steps_done[1], 3);
  EXPECT_EQ(o.steps_done[2], 30);
  EXPECT_LE(o.max_server_staleness, 2);
  EXPECT_LT(o.loss_after, 0.5 * o.loss_before);
}

// Synchronous: a worker that leaves is one clear error on the server, and the
// other worker's wait for its reply ends too (no hang).
TEST(ParameterServer, SynchronousLostWorkerIsAnError) {
  const torch::Tensor initial = [] {
    torch::manual_seed(9);
    return flat_parameters(*make_net());
  }();
  const std::int64_t n = initial.numel();
  std::string server_error, worker_error;
  std::mutex mutex;
  const auto start = std::chrono::steady_clock::now();
  run_ranks(3, [&](Communicator& world) {
    dagr::PsLinks links = dagr::make_ps_links(world, 1);
    const auto shards = dagr::ps_shards(n, 1);
    try {
      if (links.server) {
        dagr::ParameterServer server(links.peers, initial.clone(), adam, {});
        server.serve();
        return;
      }
      torch::Tensor flat = torch::empty({n}), gradient = torch::zeros({n});
      std::optional<dagr::ParameterClient> client;
      client.emplace(links.peers, shards);
      client->pull(flat);
      for (int t = 0; t < 10; ++t) {
        if (links.index == 1 && t == 2) {
          client.reset();
          links.peers.clear();
          return;
        }
        client->push_pull(gradient, {}, flat);
      }
      client->finish({});
    } catch (const std::exception& e) {
      std::lock_guard lock(mutex);
      (links.server ? server_error : worker_error) = e.what();
    }
  });
  EXPECT_NE(server_error.find("synchronous parameter server: lost worker 1"), std::string::npos) << server_error;
  EXPECT_FALSE(worker_error.empty()) << "worker 0 finished although its server failed";
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

}  // namespace
