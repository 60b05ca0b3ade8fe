// DP-SGD's per-example clipping (dagr/train/dp_sgd.h): per-example norms and
// clipped sums equal those of a loop over examples (one backward each) for the
// MLP and the CNN; the noise shares; DDP fed through backward_with_gradients
// averages the noisy clipped sums and leaves every rank with the same bits.
#include <gtest/gtest.h>

#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/train/ddp.h"
#include "dagr/train/dp_sgd.h"
#include "rank_threads.h"

namespace dagr::train {
namespace {

struct Reference {
  std::vector<double> norms;
  std::vector<torch::Tensor> clipped_sum;
};

// The definition: each example's gradient from its own backward, its norm, the clipped sum.
Reference loop_over_examples(torch::nn::Sequential& model, const torch::Tensor& x, const torch::Tensor& y,
                             double clip) {
  Reference ref;
  const auto params = model->parameters();
  for (const auto& p : params) ref.clipped_sum.push_back(torch::zeros_like(p));
  for (std::int64_t i = 0; i < x.size(0); ++i) {
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    torch::nn::functional::cross_entropy(model->forward(x.narrow(0, i, 1)), y.narrow(0, i, 1)).backward();
    double norm2 = 0;
    for (const auto& p : params) norm2 += p.grad().to(torch::kDouble).square().sum().item<double>();
    const double norm = std::sqrt(norm2);
    ref.norms.push_back(norm);
    const double factor = std::min(1.0, clip / (norm + 1e-6));
    for (std::size_t k = 0; k < params.size(); ++k) ref.clipped_sum[k] += factor * params[k].grad();
  }
  for (auto& p : params) p.mutable_grad() = torch::Tensor();
  return ref;
}

void check_against_loop(const std::string& name, std::int64_t batch) {
  torch::manual_seed(7);
  auto model = models::make_model(name, 32);
  const auto x = torch::randn({batch, 1, 28, 28});
  const auto y = torch::randint(0, 10, {batch});
  // A clipping norm between the smallest and largest norm: some examples are clipped, some not.
  const Reference unclipped = loop_over_examples(model, x, y, 1e9);
  std::vector<double> sorted = unclipped.norms;
  std::sort(sorted.begin(), sorted.end());
  const double clip = sorted[sorted.size() / 2];
  const Reference ref = loop_over_examples(model, x, y, clip);

  const ClippedBatch got = clip_per_example(model, x, y, clip);
  ASSERT_EQ(got.norms.size(0), batch);
  for (std::int64_t i = 0; i < batch; ++i)
    EXPECT_NEAR(got.norms[i].item<double>(), ref.norms[static_cast<std::size_t>(i)],
                1e-5 * ref.norms[static_cast<std::size_t>(i)]) << name << " example " << i;
  ASSERT_EQ(got.clipped_sum.size(), ref.clipped_sum.size());
  for (std::size_t k = 0; k < ref.clipped_sum.size(); ++k) {
    const double scale = ref.clipped_sum[k].abs().max().item<double>();
    EXPECT_LE((got.clipped_sum[k] - ref.clipped_sum[k]).abs().max().item<double>(), 1e-5 * scale)
        << name << " parameter " << k;
  }
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined()) << "clipping left a .grad behind";
  const double mean_loss = torch::nn::functional::cross_entropy(model->forward(x), y).item<double>();
  EXPECT_NEAR(got.loss.item<double>(), mean_loss, 1e-5 * mean_loss);
}

TEST(DpSgd, MlpPerExampleNormsAndClippedSumEqualALoop) { check_against_loop("mlp", 24); }
TEST(DpSgd, CnnPerExampleNormsAndClippedSumEqualALoop) { check_against_loop("cnn", 6); }

TEST(DpSgd, LayersWithoutARuleAreRefused) {
  torch::nn::Sequential model(torch::nn::Flatten(), torch::nn::Linear(784, 10), torch::nn::BatchNorm1d(10));
  EXPECT_THROW(clip_per_example(model, torch::randn({4, 1, 28, 28}), torch::zeros({4}, torch::kLong), 1.0),
               InputError);
  auto mlp = models::make_model("mlp", 8);
  EXPECT_THROW(clip_per_example(mlp, torch::randn({4, 784}), torch::zeros({4}, torch::kLong), 0.0), InputError);
}

TEST(DpSgd, NoiseSharesAddUpAndAreReproducible) {
  // Four shares of N(0, 2²/4): each has standard deviation 1, their sum 2.
  std::vector<torch::Tensor> total = {torch::zeros({200000})};
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<torch::Tensor> share = {torch::zeros({200000})};
    at::Generator g = dp_noise_generator(42, rank, 3);
    add_noise_share(share, 2.0, 4, g);
    EXPECT_NEAR(share[0].std().item<double>(), 1.0, 0.01);
    total[0] += share[0];
  }
  EXPECT_NEAR(total[0].std().item<double>(), 2.0, 0.02);
  auto draw = [](std::uint64_t key, int rank, std::int64_t step) {
    at::Generator g = dp_noise_generator(key, rank, step);
    return torch::randn({16}, g);
  };
  EXPECT_TRUE(torch::equal(draw(1, 0, 5), draw(1, 0, 5)));
  EXPECT_FALSE(torch::equal(draw(1, 0, 5), draw(1, 1, 5)));
  EXPECT_FALSE(torch::equal(draw(1, 0, 5), draw(1, 0, 6)));
  EXPECT_FALSE(torch::equal(draw(1, 0, 5), draw(2, 0, 5)));
}

TEST(DpSgd, BackwardWithGradientsSetsExactlyThoseGradients) {
  auto model = models::make_model("mlp", 16);
  std::vector<torch::Tensor> grads;
  for (const auto& p : model->parameters()) grads.push_back(torch::randn_like(p));
  backward_with_gradients(*model, grads);
  const auto params = model->parameters();
  for (std::size_t k = 0; k < params.size(); ++k) EXPECT_TRUE(torch::equal(params[k].grad(), grads[k]));
}

// Two ranks, each its own examples and noise: after DDP's average every rank
// holds the same bits, and the gradient is (Σ clipped sums + Σ noise shares) / global batch.
TEST(DpSgd, RanksStayBitwiseEqualUnderDdp) {
  constexpr int kWorld = 2, kBatch = 5, kSteps = 3;
  constexpr double kClip = 0.5, kSigma = 1.0;
  torch::manual_seed(3);
  const auto x = torch::randn({kWorld * kBatch * kSteps, 1, 28, 28});
  const auto y = torch::randint(0, 10, {kWorld * kBatch * kSteps});
  std::mutex mutex;
  std::vector<std::vector<torch::Tensor>> params(kWorld), first_grads(kWorld), own_sums(kWorld);
  std::mutex construct;
  dagr::testing::run_ranks(kWorld, [&](Communicator& comm) {
    torch::nn::Sequential model{nullptr};
    {
      std::lock_guard lock(construct);
      model = models::make_model("mlp", 16);
    }
    DistributedDataParallel ddp(model.ptr(), comm);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1));
    const int r = comm.rank();
    for (int s = 0; s < kSteps; ++s) {
      const auto part = (s * kWorld + r) * kBatch;
      opt.zero_grad();
      ClippedBatch b = clip_per_example(model, x.narrow(0, part, kBatch), y.narrow(0, part, kBatch), kClip);
      at::Generator g = dp_noise_generator(9, r, s);
      add_noise_share(b.clipped_sum, kSigma * kClip, kWorld, g);
      std::vector<torch::Tensor> own;
      for (auto& t : b.clipped_sum) {
        t.mul_(static_cast<double>(kWorld) / (kWorld * kBatch));
        own.push_back(t.clone());
      }
      backward_with_gradients(*model, b.clipped_sum);
      if (s == 0) {
        std::lock_guard lock(mutex);
        for (auto& p : model->parameters()) first_grads[r].push_back(p.grad().clone());
        own_sums[r] = own;
      }
      opt.step();
    }
    std::lock_guard lock(mutex);
    for (auto& p : model->parameters()) params[r].push_back(p.detach().clone());
  });
  for (std::size_t k = 0; k < params[0].size(); ++k) {
    EXPECT_TRUE(torch::equal(params[1][k], params[0][k])) << "parameter " << k << " differs between ranks";
    EXPECT_TRUE(torch::equal(first_grads[1][k], first_grads[0][k]));
    EXPECT_TRUE(torch::allclose(first_grads[0][k], (own_sums[0][k] + own_sums[1][k]) / kWorld, 1e-5, 1e-6));
    EXPECT_FALSE(torch::equal(own_sums[0][k], own_sums[1][k]));
  }
}

}  // namespace
}  // namespace dagr::train
