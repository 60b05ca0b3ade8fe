// Pipeline parallelism with ranks as threads: the schedules' simulator
// (bubble, peak in-flight, broken lists caught), the partition, and training
// through the executor against one process with the same global batch for
// P = 2, 3, M = 1, 4, GPipe and 1F1B, P × D = 2 × 2, the CNN, and stages
// split by tensor parallelism (P × T = 2 × 2, 2 × 3, P × T × D = 2 × 2 × 2).
#include <gtest/gtest.h>

#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/parallel/pipeline.h"
#include "dagr/parallel/tensor_parallel_stage.h"
#include "dagr/train/checkpoint.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

TEST(PipelineSchedule, GpipeBubbleIsTheFormula) {
  for (int P = 1; P <= 5; ++P)
    for (int M = 1; M <= 10; ++M) {
      const auto report = simulate(make_schedule(ScheduleKind::gpipe, P, M));
      EXPECT_NEAR(report.bubble_fraction, double(P - 1) / (M + P - 1), 1e-12) << "P " << P << " M " << M;
      EXPECT_EQ(report.ticks, (M + P - 1) * 3);
      for (int s = 0; s < P; ++s) EXPECT_EQ(report.peak_in_flight[s], M);
    }
}

TEST(PipelineSchedule, OneFOneBSameBubbleAtMostPInFlight) {
  for (int P = 1; P <= 5; ++P)
    for (int M = 1; M <= 10; ++M) {
      const auto report = simulate(make_schedule(ScheduleKind::one_f_one_b, P, M));
      EXPECT_NEAR(report.bubble_fraction, double(P - 1) / (M + P - 1), 1e-12) << "P " << P << " M " << M;
      for (int s = 0; s < P; ++s) EXPECT_EQ(report.peak_in_flight[s], std::min(P - s, M)) << "P " << P << " M " << M;
      EXPECT_LE(report.max_peak_in_flight, P);
    }
}

TEST(PipelineSchedule, BrokenListsAreCaught) {
  // Rank 0 takes the gradients in reverse order: the channel delivers micro-batch 0 first.
  auto reversed = make_schedule(ScheduleKind::gpipe, 2, 2);
  auto& r0 = reversed.ranks[0];
  r0.erase(r0.end() - 4, r0.end());
  r0.push_back({ActionKind::recv_gradient, 1});
  r0.push_back({ActionKind::backward, 1});
  r0.push_back({ActionKind::recv_gradient, 0});
  r0.push_back({ActionKind::backward, 0});
  try {
    simulate(reversed);
    ADD_FAILURE() << "a channel order mismatch went through";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("meets micro-batch 0 first"), std::string::npos) << e.what();
  }
  // Rank 1 never sends the gradient of micro-batch 1: rank 0 waits for ever.
  auto missing = make_schedule(ScheduleKind::one_f_one_b, 2, 2);
  auto& r1 = missing.ranks[1];
  r1.erase(std::find(r1.begin(), r1.end(), Action{ActionKind::send_gradient, 1}));
  try {
    simulate(missing);
    ADD_FAILURE() << "a deadlock went through";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deadlocks"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 0 at recv_grad 1"), std::string::npos) << e.what();
  }
  // A backward before its forward.
  auto early = make_schedule(ScheduleKind::gpipe, 1, 2);
  std::swap(early.ranks[0][0], early.ranks[0][2]);
  EXPECT_THROW(simulate(early), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::gpipe, 0, 4), InputError);
  EXPECT_THROW(parse_schedule_kind("zigzag"), InputError);
}

TEST(PipelineSchedule, PictureShowsEachRanksActions) {
  const auto plan = make_schedule(ScheduleKind::one_f_one_b, 2, 3);
  const std::string text = describe(plan) + picture(plan, simulate(plan));
  EXPECT_NE(text.find("rank 1: recv_act 0, F0, B0, send_grad 0"), std::string::npos) << text;
  EXPECT_NE(text.find("rank 0  F0 F1 .  "), std::string::npos) << text;
  EXPECT_NE(text.find("bubble 25.0 %"), std::string::npos) << text;
}

TEST(PipelinePartition, BalancesCost) {
  auto b = partition_by_cost({1, 1, 1, 1, 10}, 2);
  EXPECT_EQ(b[0].begin, 0);
  EXPECT_EQ(b[0].end, 4);
  EXPECT_EQ(b[1].end, 5);
  b = partition_by_cost({3, 3, 3, 3, 3, 3}, 3);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(b[s].end - b[s].begin, 2);
  EXPECT_THROW(partition_by_cost({1, 2}, 3), InputError);
  // The deeper MLP: four hidden layers per stage (the first is a little smaller).
  b = partition_by_parameters(models::make_model("deep-mlp", 512), 2);
  EXPECT_EQ(b[0].end, 8);  // Flatten, Linear 784→h, then 3 hidden Linear (the ReLU after the third: a tie, the earlier cut)
  EXPECT_EQ(b[1].end, 18);
}

struct Batch {
  torch::Tensor x, y;
};

// Trains `reference` (the whole model, one process) and P × T × D threads
// that run it as a pipeline (with T > 1 each stage split over a tensor group),
// K steps of SGD with momentum on the same global batches; each rank's layers
// (gathered over its tensor group) and their momentum must equal the
// reference's afterwards, and the gathered model on rank 0 too.
void train_and_compare(torch::nn::Sequential reference, const std::vector<Batch>& batches, int P, int D, int M,
                       ScheduleKind kind, int T = 1) {
  SCOPED_TRACE(::testing::Message() << "P " << P << " T " << T << " D " << D << " M " << M << " " << name(kind));
  auto copy = [](const torch::nn::Sequential& m) {
    return torch::nn::Sequential(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(m->clone()));
  };
  const auto initial = copy(reference);
  torch::optim::SGD ref_opt(reference->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (const auto& b : batches) {
    ref_opt.zero_grad();
    torch::nn::functional::cross_entropy(reference->forward(b.x), b.y).backward();
    ref_opt.step();
  }
  std::mutex clone_lock;
  run_ranks(P * T * D, [&](Communicator& world) {
    auto groups = make_pipeline_groups(world, P, T);
    torch::nn::Sequential model{nullptr};
    {
      std::lock_guard<std::mutex> lock(clone_lock);
      model = copy(initial);
    }
    const auto bounds = partition_by_parameters(model, P);
    const int s = groups.pipeline.rank(), d = groups.data.rank();
    auto dense_stage = make_stage(model, bounds[s]);
    std::optional<TensorParallelStage> split;
    if (T > 1) split.emplace(dense_stage, groups.tensor);
    auto stage = split ? split->module() : dense_stage;
    PipelineExecutor exec(stage, groups.pipeline, make_schedule(kind, P, M));
    torch::optim::SGD opt(stage->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    for (const auto& b : batches) {
      const std::int64_t n = b.x.size(0) / D;
      const auto x = b.x.narrow(0, d * n, n), y = b.y.narrow(0, d * n, n);
      const auto xs = torch::tensor_split(x, M), ys = torch::tensor_split(y, M);
      opt.zero_grad();
      const auto stats = exec.step(xs, [&](int i, const torch::Tensor& out) {
        return torch::nn::functional::cross_entropy(
                   out, ys[i], torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
               static_cast<double>(n);
      });
      EXPECT_EQ(stats.peak_in_flight, exec.simulation().peak_in_flight[s]);
      if (kind == ScheduleKind::one_f_one_b) {
        EXPECT_LE(stats.peak_in_flight, P);
      }
      average_gradients(*stage, groups.data);
      opt.step();
    }
    const auto want_named = make_stage(reference, bounds[s])->named_parameters();
    const auto want = want_named.values();
    auto got = stage->parameters();
    // The momentum under the dense stage's names, gathered as a checkpoint gathers it.
    torch::OrderedDict<std::string, torch::Tensor> named;
    for (std::size_t k = 0; k < got.size(); ++k) named.insert(want_named[k].key(), got[k]);
    auto momentum = optimizer_state(opt, named);
    if (split) {
      got = split->gather(got);
      map_per_element_state(momentum, named, [&](const auto& shards) { return split->gather(shards); });
    }
    std::map<std::string, torch::Tensor> want_momentum;
    {
      std::lock_guard<std::mutex> lock(clone_lock);
      want_momentum = optimizer_state(ref_opt, want_named);
    }
    ASSERT_EQ(want.size(), got.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      EXPECT_TRUE(torch::allclose(got[k], want[k], 1e-4, 1e-5)) << "stage " << s << " parameter " << k << " differs by "
                                                                << (got[k] - want[k]).abs().max().item<float>();
      const std::string key = want_named[k].key() + "/momentum_buffer";
      ASSERT_TRUE(momentum.count(key) && want_momentum.count(key)) << key;
      EXPECT_TRUE(torch::allclose(momentum[key], want_momentum[key], 1e-4, 1e-5)) << "stage " << s << " " << key;
    }
    if (split) {  // and back: this rank's shard of the dense moments is its own
      const auto own = stage->parameters();
      map_per_element_state(momentum, named, [&](const auto& whole) { return split->shard(whole); });
      for (std::size_t k = 0; k < own.size(); ++k)
        EXPECT_TRUE(torch::equal(momentum[want_named[k].key() + "/momentum_buffer"],
                                 optimizer_state(opt, named)[want_named[k].key() + "/momentum_buffer"]))
            << "shard(gather(momentum)) of parameter " << k;
    }
    if (split) split->gather_into(dense_stage);
    if (groups.tensor.rank() == 0) gather_stages(model, bounds, groups.pipeline);
    if (world.rank() == 0) {
      const auto all = model->parameters(), ref = reference->parameters();
      for (std::size_t k = 0; k < all.size(); ++k) EXPECT_TRUE(torch::allclose(all[k], ref[k], 1e-4, 1e-5)) << k;
    }
  });
}

std::vector<Batch> random_batches(std::vector<std::int64_t> shape, int steps, int classes) {
  std::vector<Batch> out;
  for (int k = 0; k < steps; ++k) out.push_back({torch::randn(shape), torch::randint(classes, {shape[0]}, torch::kInt64)});
  return out;
}

torch::nn::Sequential small_mlp() {
  namespace nn = torch::nn;
  return nn::Sequential(nn::Flatten(), nn::Linear(12, 16), nn::ReLU(), nn::Linear(16, 16), nn::ReLU(), nn::Linear(16, 16),
                        nn::ReLU(), nn::Linear(16, 5));
}

class Layouts : public ::testing::TestWithParam<std::tuple<int, int, ScheduleKind>> {};

TEST_P(Layouts, TrainsAsOneProcess) {
  const auto [P, M, kind] = GetParam();
  torch::manual_seed(11);
  auto model = small_mlp();
  train_and_compare(model, random_batches({8, 3, 4}, 3, 5), P, 1, M, kind);
}

INSTANTIATE_TEST_SUITE_P(Pipeline, Layouts,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Values(1, 4),
                                            ::testing::Values(ScheduleKind::gpipe, ScheduleKind::one_f_one_b)));

TEST(Pipeline, TwoStagesTimesTwoDataRanks) {
  for (auto kind : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b}) {
    torch::manual_seed(12);
    auto model = small_mlp();
    train_and_compare(model, random_batches({8, 12}, 3, 5), 2, 2, 4, kind);
  }
}

// Tensor parallelism inside the stages: each stage of small_mlp holds one
// Linear → ReLU → Linear run (T = 3 splits its 16 features 6, 5, 5).
TEST(Pipeline, StagesSplitByTensorParallelism) {
  for (auto kind : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b}) {
    torch::manual_seed(15);
    auto model = small_mlp();
    train_and_compare(model, random_batches({8, 12}, 3, 5), 2, 1, 4, kind, /*T=*/2);
  }
  torch::manual_seed(16);
  train_and_compare(small_mlp(), random_batches({8, 12}, 3, 5), 2, 1, 2, ScheduleKind::one_f_one_b, /*T=*/3);
  torch::manual_seed(17);
  train_and_compare(small_mlp(), random_batches({8, 12}, 3, 5), 2, 2, 2, ScheduleKind::one_f_one_b, /*T=*/2);
}

// The CNN's second stage ends in its Linear → ReLU → Linear head: split; the
// convolutions of the first stage stay whole on both tensor ranks.
TEST(Pipeline, CnnHeadSplitByTensorParallelism) {
  torch::manual_seed(18);
  auto model = models::make_model("cnn");
  const auto bounds = partition_by_parameters(model, 2);
  EXPECT_TRUE(splittable_widths(make_stage(model, bounds[0])).empty());
  EXPECT_EQ(splittable_widths(make_stage(model, bounds[1])), std::vector<std::int64_t>{128});
  train_and_compare(model, random_batches({4, 1, 28, 28}, 2, 10), 2, 1, 2, ScheduleKind::gpipe, /*T=*/2);
}

TEST(Pipeline, DeepMlpDepth) {
  // Flatten, depth × (Linear, ReLU), the output Linear.
  EXPECT_EQ(models::make_model("deep-mlp", 8)->size(), 18u);
  EXPECT_EQ(models::make_model("deep-mlp", 8, 3)->size(), 8u);
  EXPECT_EQ(models::make_model("deep-mlp", 8, 1)->size(), 4u);
  EXPECT_THROW(models::make_model("deep-mlp", 8, 0), InputError);
}

TEST(Pipeline, TensorSplitNeedsARunInsideAStage) {
  // The 2-layer mlp in 2 stages: its Linears always fall apart.
  auto mlp = models::make_model("mlp", 32);
  EXPECT_THROW(check_tensor_split(mlp, partition_by_parameters(mlp, 2), 2), InputError);
  auto deep = models::make_model("deep-mlp", 8);
  EXPECT_NO_THROW(check_tensor_split(deep, partition_by_parameters(deep, 2), 8));
  EXPECT_THROW(check_tensor_split(deep, partition_by_parameters(deep, 2), 9), InputError);  // 8 features over 9 ranks
}

// A first stage of only a Flatten (what the cut gives narrow models in many
// stages): nothing to differentiate there, and the step still runs.
TEST(Pipeline, FirstStageWithoutParameters) {
  namespace nn = torch::nn;
  torch::manual_seed(19);
  nn::Sequential model(nn::Flatten(), nn::Linear(12, 16), nn::ReLU(), nn::Linear(16, 5));
  const auto bounds = partition_by_parameters(model, 3);
  EXPECT_EQ(bounds[0].end, 1);
  for (auto kind : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b})
    train_and_compare(model, random_batches({8, 3, 4}, 2, 5), 3, 1, 2, kind);
}

TEST(Pipeline, CnnInTwoStages) {
  torch::manual_seed(13);
  auto model = models::make_model("cnn");
  train_and_compare(model, random_batches({4, 1, 28, 28}, 2, 10), 2, 1, 2, ScheduleKind::one_f_one_b);
}

TEST(Pipeline, ForwardOnlyMatchesTheModel) {
  torch::manual_seed(14);
  auto model = small_mlp();
  const auto x = torch::randn({5, 12});
  const auto want = model->forward(x).detach();
  run_ranks(3, [&](Communicator& comm) {
    const auto bounds = partition_by_parameters(model, 3);
    PipelineExecutor exec(make_stage(model, bounds[comm.rank()]), comm, make_schedule(ScheduleKind::gpipe, 3, 1));
    const auto y = exec.forward(x);
    if (comm.rank() == 2) {
      EXPECT_TRUE(torch::allclose(y, want));
    } else {
      EXPECT_FALSE(y.defined());
    }
  });
}

TEST(Pipeline, ScheduleMustFitTheGroup) {
  run_ranks(2, [&](Communicator& comm) {
    EXPECT_THROW(PipelineExecutor(small_mlp(), comm, make_schedule(ScheduleKind::gpipe, 3, 2)), InputError);
  });
}

}  // namespace
}  // namespace dagr
