// Tensor-parallel layers against the dense layer, with ranks as threads:
// forward outputs and gradients for T = 1..4 with feature counts T does not
// divide; training the MLP with T = 2 and with 2 × 2 (TP × DP) against dense.
#include <gtest/gtest.h>

#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/parallel/tensor_parallel.h"
#include "dagr/train/ddp.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

bool close(const torch::Tensor& a, const torch::Tensor& b) { return torch::allclose(a, b, 1e-4, 1e-5); }

struct Dense {
  torch::nn::Linear layer{nullptr};
  torch::Tensor x, y, grad_x;
  Dense(std::int64_t in, std::int64_t out) {
    torch::manual_seed(3);
    layer = torch::nn::Linear(in, out);
    x = torch::randn({5, in}, torch::requires_grad());
    y = layer->forward(x);
    (y * y).sum().backward();  // a loss whose gradient depends on every output
    grad_x = x.grad().clone();
  }
};

class Sizes : public ::testing::TestWithParam<int> {};

TEST_P(Sizes, ColumnParallelMatchesDense) {
  const int T = GetParam();
  const std::int64_t in = 13, out = 10;
  Dense d(in, out);
  for (bool gather : {true, false}) {
    run_ranks(T, [&](Communicator& comm) {
      ColumnParallelLinear layer(in, out, comm, gather);
      layer->load_dense(d.layer->weight.detach(), d.layer->bias.detach());
      auto x = d.x.detach().clone().requires_grad_(true);
      auto y = layer->forward(x);
      const Shard s = shard_of(out, T, comm.rank());
      const auto expected = gather ? d.y : d.y.narrow(1, s.begin, s.length);
      EXPECT_TRUE(close(y, expected));
      (y * y).sum().backward();
      EXPECT_TRUE(close(layer->weight.grad(), d.layer->weight.grad().narrow(0, s.begin, s.length)));
      EXPECT_TRUE(close(layer->bias.grad(), d.layer->bias.grad().narrow(0, s.begin, s.length)));
      if (gather) {
        EXPECT_TRUE(close(x.grad(), d.grad_x));  // without the gather each rank's loss is partial
      }
    });
  }
}

TEST_P(Sizes, RowParallelMatchesDense) {
  const int T = GetParam();
  const std::int64_t in = 11, out = 7;
  Dense d(in, out);
  run_ranks(T, [&](Communicator& comm) {
    RowParallelLinear layer(in, out, comm, /*input_is_parallel=*/false);
    layer->load_dense(d.layer->weight.detach(), d.layer->bias.detach());
    auto x = d.x.detach().clone().requires_grad_(true);
    auto y = layer->forward(x);
    EXPECT_TRUE(close(y, d.y));
    (y * y).sum().backward();
    const Shard s = shard_of(in, T, comm.rank());
    EXPECT_TRUE(close(layer->weight.grad(), d.layer->weight.grad().narrow(1, s.begin, s.length)));
    EXPECT_TRUE(close(layer->bias.grad(), d.layer->bias.grad()));
    EXPECT_TRUE(close(x.grad(), d.grad_x));
    auto [w, b] = layer->gather_dense();
    EXPECT_TRUE(torch::equal(w, d.layer->weight.detach()));
  });
}

INSTANTIATE_TEST_SUITE_P(Tp, Sizes, ::testing::Values(1, 2, 3, 4));

// K steps of SGD: the TP MLP (T ranks, gradients all-reduced over `dp` groups
// by DDP) ends with the dense model's parameters.
void check_training(int tp, int dp) {
  constexpr int kSteps = 3, kBatch = 4;
  const std::int64_t hidden = 30;
  torch::manual_seed(11);
  auto dense = models::make_model("mlp", hidden);
  auto initial = models::make_model("mlp", hidden);
  {
    torch::NoGradGuard g;
    for (std::size_t i = 0; i < dense->parameters().size(); ++i) initial->parameters()[i].copy_(dense->parameters()[i]);
  }
  std::vector<torch::Tensor> xs, ys;
  for (int s = 0; s < kSteps; ++s) {
    xs.push_back(torch::randn({dp * kBatch, 1, 28, 28}));
    ys.push_back(torch::randint(0, 10, {dp * kBatch}, torch::kInt64));
  }
  torch::optim::SGD dense_opt(dense->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int s = 0; s < kSteps; ++s) {
    dense_opt.zero_grad();
    torch::nn::functional::cross_entropy(dense->forward(xs[s]), ys[s]).backward();
    dense_opt.step();
  }
  std::mutex mutex;
  std::vector<torch::Tensor> gathered;
  run_ranks(tp * dp, [&](Communicator& world) {
    const int tp_rank = world.rank() % tp, dp_rank = world.rank() / tp;
    auto tp_group = world.split(dp_rank, tp_rank);  // ranks that share a batch
    auto dp_group = world.split(tp_rank, dp_rank);  // ranks that hold the same shard
    TensorParallelMlp model(hidden, *tp_group);
    model->load_dense(initial);
    DistributedDataParallel ddp(model.ptr(), *dp_group);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    for (int s = 0; s < kSteps; ++s) {
      opt.zero_grad();
      auto x = xs[s].narrow(0, dp_rank * kBatch, kBatch), y = ys[s].narrow(0, dp_rank * kBatch, kBatch);
      torch::nn::functional::cross_entropy(model->forward(x), y).backward();
      opt.step();
    }
    auto out = models::make_model("mlp", hidden);
    model->gather_into(out);
    if (world.rank() == 0) {
      std::lock_guard lock(mutex);
      for (auto& p : out->parameters()) gathered.push_back(p.detach().clone());
    }
  });
  const auto expected = dense->parameters();
  ASSERT_EQ(gathered.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_TRUE(close(gathered[i], expected[i])) << "parameter " << i << " max diff "
                                                 << (gathered[i] - expected[i]).abs().max().item<float>();
}

TEST(TpTraining, TwoRanksMatchDense) { check_training(2, 1); }
TEST(TpTraining, TwoByTwoMatchesDense) { check_training(2, 2); }

TEST(TpErrors, CheckpointsThatDoNotFitAreClearErrors) {
  run_ranks(2, [](Communicator& comm) {
    ColumnParallelLinear layer(8, 6, comm);
    try {
      layer->load_dense(torch::zeros({6, 9}), torch::zeros({6}));
      ADD_FAILURE() << "no error";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("[6, 8]"), std::string::npos) << e.what();
    }
    EXPECT_THROW(RowParallelLinear(1, 4, comm), InputError);  // 1 feature over 2 ranks
    auto cnn = models::make_model("cnn");
    TensorParallelMlp mlp(16, comm);
    EXPECT_THROW(mlp->load_dense(cnn), InputError);
  });
}

}  // namespace
}  // namespace dagr
