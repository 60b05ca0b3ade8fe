// dagr::nn::Linear and gradient homes: torch's Linear in initialisation,
// outputs and gradients (the same bits for 2-D inputs); gradients written into
// their homes, accumulated there, and a weight used twice getting the sum; DDP
// over such layers copying no gradient into its buckets and training to the
// same bits as over torch's layers.
#include <gtest/gtest.h>

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <mutex>

#include "dagr/error.h"
#include "dagr/models/linear.h"
#include "dagr/models/models.h"
#include "dagr/train/ddp.h"
#include "dagr/train/gradient_home.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

struct Pair {
  torch::nn::Linear plain{nullptr};
  nn::Linear homed{nullptr};
  Pair(int in, int out, bool bias) {
    torch::manual_seed(7);
    plain = torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
    torch::manual_seed(7);
    homed = nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  }
};

// A loss whose gradient differs in every element.
torch::Tensor loss_of(const torch::Tensor& y) {
  return (y * torch::arange(y.numel(), y.options()).view(y.sizes()).sin()).sum();
}

// Homes for a layer's parameters, for as long as it lives.
struct Homes {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> homes;  // parameter, home
  explicit Homes(torch::nn::Module& layer) {
    for (const auto& p : layer.parameters()) {
      homes.emplace_back(p, torch::zeros_like(p));
      set_gradient_home(p, homes.back().second);
    }
  }
  // Gradients back to none, homes free: the next backward writes them.
  void reset() {
    for (auto& [p, h] : homes) {
      p.mutable_grad().reset();
      release_gradient_home(p);
    }
  }
  bool hold_gradients() const {
    for (const auto& [p, h] : homes)
      if (p.grad().data_ptr() != h.data_ptr()) return false;
    return true;
  }
  ~Homes() {
    for (auto& [p, h] : homes) clear_gradient_home(p, h);
  }
};

TEST(Linear, SameInitialisationOutputsAndGradientsAsTorchsLinear) {
  for (const bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "with bias" : "without bias");
    Pair p(5, 3, bias);
    ASSERT_TRUE(p.homed->as<torch::nn::Linear>() != nullptr);
    for (std::size_t i = 0; i < p.plain->parameters().size(); ++i)
      EXPECT_TRUE(torch::equal(p.plain->parameters()[i], p.homed->parameters()[i]));
    Homes homes(*p.homed);
    torch::manual_seed(1);
    const auto x = torch::randn({4, 5});
    const auto xa = x.clone().requires_grad_(), xb = x.clone().requires_grad_();
    const auto ya = p.plain(xa), yb = p.homed(xb);
    EXPECT_TRUE(torch::equal(ya, yb));
    loss_of(ya).backward();
    loss_of(yb).backward();
    EXPECT_TRUE(homes.hold_gradients());
    EXPECT_TRUE(torch::equal(p.plain->weight.grad(), p.homed->weight.grad()));
    if (bias) EXPECT_TRUE(torch::equal(p.plain->bias.grad(), p.homed->bias.grad()));
    EXPECT_TRUE(torch::equal(xa.grad(), xb.grad()));

    // (…, in) inputs: rows of the last dimension; torch's linear sums in another order there.
    for (const auto& sizes : {std::vector<std::int64_t>{2, 4, 5}, std::vector<std::int64_t>{5}}) {
      const auto xs = torch::randn(sizes);
      p.plain->zero_grad();
      homes.reset();
      const auto ys_a = p.plain(xs), ys_b = p.homed(xs);
      EXPECT_EQ(ys_a.sizes(), ys_b.sizes());
      EXPECT_TRUE(torch::allclose(ys_a, ys_b, 1e-5, 1e-6));
      loss_of(ys_a).backward();
      loss_of(ys_b).backward();
      EXPECT_TRUE(homes.hold_gradients());
      EXPECT_TRUE(torch::allclose(p.plain->weight.grad(), p.homed->weight.grad(), 1e-5, 1e-6));
    }
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(p.plain(x), p.homed(x)));

    // clone(): a dagr::nn::Linear of its own, the same values.
    p.homed->eval();
    const auto copy = std::dynamic_pointer_cast<nn::LinearImpl>(p.homed->clone());
    ASSERT_TRUE(copy != nullptr);
    EXPECT_FALSE(copy->is_training());
    EXPECT_NE(copy->weight.data_ptr(), p.homed->weight.data_ptr());
    EXPECT_TRUE(torch::equal(copy->forward(x), p.homed(x)));
  }
}

TEST(Linear, WritesItsGradientsIntoTheirHomesAndAccumulatesThere) {
  Pair p(6, 4, true);
  torch::manual_seed(2);
  const auto x = torch::randn({3, 6});
  loss_of(p.plain(x)).backward();
  const auto w = p.homed->weight, b = p.homed->bias;
  const auto w_home = torch::full_like(w, 99), b_home = torch::full_like(b, 99);
  set_gradient_home(w, w_home);
  set_gradient_home(b, b_home);

  loss_of(p.homed(x)).backward();
  EXPECT_EQ(w.grad().data_ptr(), w_home.data_ptr());
  EXPECT_EQ(b.grad().data_ptr(), b_home.data_ptr());
  EXPECT_TRUE(torch::equal(w_home, p.plain->weight.grad()));
  EXPECT_TRUE(torch::equal(b_home, p.plain->bias.grad()));

  // A gradient already there: autograd adds the new one to it, in its home.
  loss_of(p.homed(x)).backward();
  EXPECT_EQ(w.grad().data_ptr(), w_home.data_ptr());
  EXPECT_TRUE(torch::allclose(w_home, 2 * p.plain->weight.grad()));

  // Not released (no owner saw the gradient in): the home stays claimed.
  w.mutable_grad().reset();
  loss_of(p.homed(x)).backward();
  EXPECT_NE(w.grad().data_ptr(), w_home.data_ptr());
  EXPECT_TRUE(torch::equal(w.grad(), p.plain->weight.grad()));
  release_gradient_home(w);
  w.mutable_grad().reset();
  loss_of(p.homed(x)).backward();
  EXPECT_EQ(w.grad().data_ptr(), w_home.data_ptr());

  // Cleared by another owner's home: this one stays; by its own: gone.
  release_gradient_home(w);
  clear_gradient_home(w, torch::zeros_like(w));
  w.mutable_grad().reset();
  loss_of(p.homed(x)).backward();
  EXPECT_EQ(w.grad().data_ptr(), w_home.data_ptr());
  release_gradient_home(w);
  clear_gradient_home(w, w_home);
  w.mutable_grad().reset();
  loss_of(p.homed(x)).backward();
  EXPECT_NE(w.grad().data_ptr(), w_home.data_ptr());
  clear_gradient_home(b, b_home);

  EXPECT_THROW(set_gradient_home(w, torch::zeros({4, 5})), InputError);
  EXPECT_THROW(set_gradient_home(w, torch::zeros({6, 4}).t()), InputError);
}

// y = L(L(x)): one backward call gets the home, the other a fresh tensor,
// and autograd adds the two.
TEST(Linear, AWeightUsedTwiceInOneForwardGetsTheSumOfItsGradients) {
  Pair p(4, 4, true);
  torch::manual_seed(3);
  const auto x = torch::randn({5, 4});
  loss_of(p.plain(p.plain(x))).backward();
  const auto w_home = torch::zeros_like(p.homed->weight), b_home = torch::zeros_like(p.homed->bias);
  set_gradient_home(p.homed->weight, w_home);
  set_gradient_home(p.homed->bias, b_home);
  loss_of(p.homed(p.homed(x))).backward();
  EXPECT_TRUE(torch::allclose(p.homed->weight.grad(), p.plain->weight.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(p.homed->bias.grad(), p.plain->bias.grad(), 1e-5, 1e-6));
  clear_gradient_home(p.homed->weight, w_home);
  clear_gradient_home(p.homed->bias, b_home);
}

// Where autograd would not adopt the gradient as .grad unchanged, no home is
// written: a hook that keeps the gradient it sees, autograd::grad (which hands
// its results to the caller), create_graph (a second-order graph over the
// products), autocast (casts autograd must record). Each gives torch's results.
TEST(Linear, NoHomeWhereAutogradWouldNotAdoptTheGradientAsItIs) {
  Pair p(6, 4, true);
  Homes homes(*p.homed);
  torch::manual_seed(6);
  const auto x = torch::randn({3, 6});
  loss_of(p.plain(x)).backward();
  const auto expected = p.plain->weight.grad().clone();
  const auto& w = p.homed->weight;
  const auto w_home = homes.homes[0].second;

  {  // a hook that keeps what it sees
    torch::Tensor kept;
    const auto handle = w.register_hook([&](const torch::Tensor& g) { kept = g; });
    homes.reset();
    loss_of(p.homed(x)).backward();
    EXPECT_NE(kept.data_ptr(), w_home.data_ptr());
    EXPECT_TRUE(torch::equal(kept, expected));
    w.remove_hook(handle);
    torch::autograd::impl::clear_hooks(w);  // a removed hook leaves its slot behind
  }
  {  // autograd::grad with respect to the parameters
    homes.reset();
    const auto g = torch::autograd::grad({loss_of(p.homed(x))}, {w})[0];
    EXPECT_NE(g.data_ptr(), w_home.data_ptr());
    EXPECT_TRUE(torch::equal(g, expected));
    EXPECT_FALSE(w.grad().defined());
    loss_of(p.homed(x)).backward();  // the home was not left claimed
    EXPECT_EQ(w.grad().data_ptr(), w_home.data_ptr());
  }
  {  // create_graph: the gradient's own graph, and a second derivative through it
    homes.reset();
    const auto xg = x.clone().requires_grad_();
    const auto yg = p.homed(xg);
    const auto gx = torch::autograd::grad({loss_of(yg)}, {xg}, {}, true, /*create_graph=*/true)[0];
    gx.square().sum().backward();
    const auto xr = x.clone().requires_grad_();
    const auto gr = torch::autograd::grad({loss_of(p.plain(xr))}, {xr}, {}, true, true)[0];
    p.plain->zero_grad();
    gr.square().sum().backward();
    EXPECT_TRUE(torch::allclose(w.grad(), p.plain->weight.grad(), 1e-5, 1e-6));

    homes.reset();
    loss_of(p.homed(x)).backward({}, /*retain_graph=*/false, /*create_graph=*/true);
    EXPECT_NE(w.grad().data_ptr(), w_home.data_ptr());
    EXPECT_TRUE(torch::equal(w.grad().detach(), expected));
  }
  {  // autocast: torch's linear, whose casts autograd records
    homes.reset();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCPU, true);
#else
    at::autocast::set_cpu_enabled(true);
#endif
    const auto y = p.homed(x);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCPU, false);
#else
    at::autocast::set_cpu_enabled(false);
#endif
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    loss_of(y.to(torch::kFloat32)).backward();
    EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::allclose(w.grad(), expected, 0.05, 0.05));
  }
}

// The built-in MLP (dagr::nn::Linear) against the same MLP of torch's Linear,
// each under DDP on 2 ranks, gradients reset to none every step (as dagr train
// and PyTorch 2's zero_grad do): DDP copies no gradient of the first, every
// one of the second, and both train to the same bits.
TEST(Ddp, LinearLayersGradientsNeedNoCopyIntoTheBuckets) {
  constexpr int kSteps = 3;
  torch::manual_seed(4);
  const auto x = torch::randn({kSteps, 2, 6, 1, 28, 28});
  const auto y = torch::randint(0, 10, {kSteps, 2, 6}, torch::kInt64);
  std::mutex mutex;
  std::vector<torch::Tensor> trained[2];
  for (const bool homed : {true, false}) {
    run_ranks(2, [&](Communicator& comm) {
      torch::nn::Sequential model{nullptr};
      {
        std::lock_guard lock(mutex);
        torch::manual_seed(5);
        model = homed ? models::make_model("mlp", 32)
                      : torch::nn::Sequential(torch::nn::Flatten(), torch::nn::Linear(784, 32), torch::nn::ReLU(),
                                              torch::nn::Linear(32, 10));
      }
      DistributedDataParallel ddp(model.ptr(), comm);
      torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
      for (int s = 0; s < kSteps; ++s) {
        for (auto& p : model->parameters()) p.mutable_grad().reset();
        torch::nn::functional::cross_entropy(model->forward(x[s][comm.rank()]), y[s][comm.rank()]).backward();
        opt.step();
      }
      EXPECT_EQ(ddp.stats().gradients_copied, homed ? 0 : 4 * kSteps);
      std::lock_guard lock(mutex);
      if (comm.rank() == 0)
        for (auto& p : model->parameters()) trained[homed].push_back(p.detach().clone());
    });
  }
  ASSERT_EQ(trained[0].size(), trained[1].size());
  for (std::size_t i = 0; i < trained[0].size(); ++i) EXPECT_TRUE(torch::equal(trained[0][i], trained[1][i])) << i;
}

}  // namespace
}  // namespace dagr
