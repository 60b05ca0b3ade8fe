// ZeroOptimizer (ZeRO-1 and ZeRO-2 over DDP's buckets), ranks as threads:
// after K steps every rank holds the parameters plain DDP with the same
// optimizer gets, and the optimizer state gathered to its dense form is the
// state plain DDP's optimizer holds (N = 2 and 3, both stages, SGD with
// momentum and Adam); each rank holds 1/N of that state; a dense state
// written at one world size loads at another, and into plain DDP.
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/train/checkpoint.h"
#include "dagr/train/ddp.h"
#include "dagr/train/zero_optimizer.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

constexpr int kZeroSteps = 4, kRows = 3;

// Several buckets of odd sizes (the MLP's 25,450 float32 parameters in
// 4 KiB and 20 KiB buckets), so blocks and rests of every kind occur.
DdpOptions small_buckets() {
  DdpOptions o;
  o.first_bucket_bytes = 4096;
  o.bucket_cap_bytes = 20480;
  return o;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& kind, std::vector<torch::Tensor> params) {
  if (kind == "sgd") return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0.05).momentum(0.9));
  return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-2));
}

// Every step's batch of N·kRows samples, made before any thread starts; rank r takes rows [r·kRows, (r+1)·kRows).
struct Batches {
  std::vector<torch::Tensor> x, y;
  Batches(int world, int steps) {
    torch::manual_seed(99);
    for (int s = 0; s < steps; ++s) {
      x.push_back(torch::randn({world * kRows, 1, 28, 28}));
      y.push_back(torch::randint(0, 10, {world * kRows}, torch::kInt64));
    }
  }
};

struct RankResult {
  std::vector<torch::Tensor> params;
  std::map<std::string, torch::Tensor> state;  // dense (checkpoint.h's optimizer_state)
  std::size_t state_bytes = 0;
  std::int64_t owned = 0;
  torch::Tensor last_gradients;  // every gradient after the last backward, before the step
};

// Trains `steps` steps on `world` thread ranks from the same initial model:
// stage 0 plain DDP with the optimizer, 1 or 2 ZeRO. `before` runs on each
// rank's optimizer before the first step (loading a state).
std::vector<RankResult> train(int world, int stage, const std::string& kind, const Batches& data, int steps,
                              const std::map<std::string, torch::Tensor>* load = nullptr,
                              const std::vector<torch::Tensor>* start = nullptr) {
  torch::manual_seed(5);
  auto initial = models::make_model("mlp", 32);
  if (start) {
    torch::NoGradGuard no_grad;
    auto p = initial->parameters();
    for (std::size_t i = 0; i < p.size(); ++i) p[i].copy_((*start)[i]);
  }
  std::vector<RankResult> results(static_cast<std::size_t>(world));
  std::mutex construct;
  run_ranks(world, [&](Communicator& comm) {
    torch::nn::Sequential model{nullptr};
    {
      std::lock_guard lock(construct);  // torch's generator is global
      model = models::make_model("mlp", 32);
      if (comm.rank() == 0) {
        torch::NoGradGuard no_grad;
        auto src = initial->parameters();
        auto dst = model->parameters();
        for (std::size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
      }
    }
    DistributedDataParallel ddp(model.ptr(), comm, small_buckets());
    std::unique_ptr<torch::optim::Optimizer> opt;
    if (stage == 0) opt = make_optimizer(kind, model->parameters());
    else
      opt = std::make_unique<ZeroOptimizer>(
          ddp, [&](std::vector<torch::Tensor> shard) { return make_optimizer(kind, std::move(shard)); },
          ZeroOptions{.stage = stage});
    const auto named = model->named_parameters();
    if (load) load_optimizer_state(*opt, named, *load);
    for (int s = 0; s < steps; ++s) {
      opt->zero_grad();
      auto x = data.x[s].narrow(0, comm.rank() * kRows, kRows);
      auto y = data.y[s].narrow(0, comm.rank() * kRows, kRows);
      torch::nn::functional::cross_entropy(model->forward(x), y).backward();
      if (s + 1 == steps) {
        std::vector<torch::Tensor> grads;
        for (const auto& p : model->parameters()) grads.push_back(p.grad().reshape({-1}).clone());
        results[static_cast<std::size_t>(comm.rank())].last_gradients = torch::cat(grads);
      }
      opt->step();
    }
    RankResult& r = results[static_cast<std::size_t>(comm.rank())];
    r.state = optimizer_state(*opt, named);  // collective under ZeRO
    r.state_bytes = optimizer_state_bytes(*opt);
    if (auto* zero = dynamic_cast<ZeroOptimizer*>(opt.get())) r.owned = zero->owned_elements();
    for (const auto& p : model->parameters()) r.params.push_back(p.detach().clone());
  });
  return results;
}

// Bitwise equal, or the largest difference.
::testing::AssertionResult same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() == b.sizes() && torch::equal(a, b)) return ::testing::AssertionSuccess();
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes " << a.sizes() << " and " << b.sizes();
  return ::testing::AssertionFailure() << "max difference " << (a - b).abs().max().item<double>();
}

struct ZeroCase {
  int world;
  int stage;
  std::string optimizer;
};

void PrintTo(const ZeroCase& c, std::ostream* os) {
  *os << "world " << c.world << " stage " << c.stage << " " << c.optimizer;
}

class ZeroEquivalence : public ::testing::TestWithParam<ZeroCase> {};

// The gradients are reduced in rank order by both (allreduce and
// reduce-scatter alike) and the optimizers are elementwise: the same bits.
TEST_P(ZeroEquivalence, SameParametersAndStateAsDdpWithTheSameOptimizer) {
  const ZeroCase c = GetParam();
  const Batches data(c.world, kZeroSteps);
  const auto ddp = train(c.world, 0, c.optimizer, data, kZeroSteps);
  const auto zero = train(c.world, c.stage, c.optimizer, data, kZeroSteps);
  std::int64_t total = 0;
  for (const auto& p : ddp[0].params) total += p.numel();
  std::int64_t owned = 0;
  for (int r = 0; r < c.world; ++r) {
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    const RankResult& z = zero[static_cast<std::size_t>(r)];
    ASSERT_EQ(z.params.size(), ddp[0].params.size());
    for (std::size_t i = 0; i < z.params.size(); ++i) EXPECT_TRUE(same_bits(z.params[i], ddp[0].params[i])) << "parameter " << i;
    ASSERT_EQ(z.state.size(), ddp[0].state.size());
    for (const auto& [key, t] : ddp[0].state) {
      ASSERT_TRUE(z.state.count(key)) << key;
      EXPECT_TRUE(same_bits(z.state.at(key), t)) << key;
    }
    // Optimizer state: 1/N of DDP's, + 5 % at most.
    EXPECT_GT(z.state_bytes, 0u);
    EXPECT_LE(static_cast<double>(z.state_bytes), 1.05 * static_cast<double>(ddp[0].state_bytes) / c.world);
    owned += z.owned;
  }
  // ZeRO-1 has every gradient averaged; ZeRO-2 only each rank's blocks (and the rests).
  for (int r = 0; r < c.world; ++r) {
    const auto averaged = zero[static_cast<std::size_t>(r)].last_gradients.eq(ddp[0].last_gradients).sum().item<std::int64_t>();
    if (c.stage == 1) EXPECT_EQ(averaged, total) << "rank " << r;
    else EXPECT_LT(averaged, total * 3 / (2 * c.world)) << "rank " << r << ": more than its share was averaged";
  }
  // The blocks cover the parameters once; every rank holds each bucket's rest.
  EXPECT_GE(owned, total);
  EXPECT_LT(owned, total + 8 * c.world * c.world);
}

INSTANTIATE_TEST_SUITE_P(Zero, ZeroEquivalence,
                         ::testing::Values(ZeroCase{2, 1, "sgd"}, ZeroCase{2, 1, "adam"}, ZeroCase{2, 2, "sgd"},
                                           ZeroCase{2, 2, "adam"}, ZeroCase{3, 1, "sgd"}, ZeroCase{3, 1, "adam"},
                                           ZeroCase{3, 2, "sgd"}, ZeroCase{3, 2, "adam"}));

// A dense state gathered from ZeRO-2 on 2 ranks, loaded into plain DDP on 3
// ranks and into ZeRO-1 on 3 ranks: both go on exactly as plain DDP on 3
// ranks given the same state does, and ZeRO gives back what it was given.
TEST(Zero, DenseStateLoadsAtAnotherWorldSizeWithOrWithoutZero) {
  const Batches two(2, 3);
  const auto saved = train(2, 2, "adam", two, 3);
  const Batches three(3, 2);
  const auto plain = train(3, 0, "adam", three, 2, &saved[0].state, &saved[0].params);
  const auto zero = train(3, 1, "adam", three, 2, &saved[0].state, &saved[0].params);
  const auto none = train(3, 0, "adam", three, 2, nullptr, &saved[0].params);
  bool state_mattered = false;
  for (std::size_t i = 0; i < plain[0].params.size(); ++i) {
    EXPECT_TRUE(same_bits(zero[1].params[i], plain[0].params[i])) << "parameter " << i;
    state_mattered |= !torch::equal(none[0].params[i], plain[0].params[i]);
  }
  EXPECT_TRUE(state_mattered) << "the loaded state made no difference: the test shows nothing";
  for (const auto& [key, t] : plain[0].state) EXPECT_TRUE(same_bits(zero[2].state.at(key), t)) << key;
  // Round trip: loaded and gathered again without a step in between.
  const auto back = train(3, 2, "adam", three, 0, &saved[0].state, &saved[0].params);
  EXPECT_EQ(back[0].state.size(), saved[0].state.size());
  for (const auto& [key, t] : saved[0].state) EXPECT_TRUE(same_bits(back[0].state.at(key), t)) << key;
}

TEST(Zero, RefusesAnUnknownStage) {
  run_ranks(1, [](Communicator& comm) {
    auto model = models::make_model("mlp", 8);
    DistributedDataParallel ddp(model.ptr(), comm);
    auto make = [](std::vector<torch::Tensor> p) { return make_optimizer("sgd", std::move(p)); };
    EXPECT_THROW(ZeroOptimizer(ddp, make, {.stage = 3}), InputError);
  });
}

}  // namespace
}  // namespace dagr
