// dagr::nn::MaxPool2d: torch's MaxPool2d to the bit — maxima, and gradients
// sent to the same element of each window — over ties, NaNs, infinities, −0,
// odd sizes, 3- and 4-dimensional inputs, float and double; options and inputs
// its loops do not take run torch's; gradients of gradients; the CNN built on
// it computing what it computes with torch's layer.
#include <gtest/gtest.h>

#include <limits>
#include <sstream>

#include <torch/csrc/autograd/forward_grad.h>

#include "dagr/models/max_pool.h"
#include "dagr/models/models.h"

namespace dagr {
namespace {

// The same bits (NaNs and the sign of zero included), shape and type.
bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto as_int = a.element_size() == 8 ? torch::kLong : a.element_size() == 4 ? torch::kInt : torch::kShort;
  return a.contiguous().view(as_int).equal(b.contiguous().view(as_int));
}

// Inputs that test the tie and NaN rules: small integers (many ties within a
// window), with NaNs, infinities and negative zeros sprinkled in.
torch::Tensor awkward(torch::IntArrayRef shape, torch::ScalarType type, int seed) {
  torch::manual_seed(seed);
  auto x = torch::randint(0, 3, shape, torch::TensorOptions(type));
  const auto u = torch::rand(shape, torch::TensorOptions(type));
  x.masked_fill_(u < 0.05, std::numeric_limits<double>::quiet_NaN());
  x.masked_fill_((u >= 0.05) & (u < 0.08), -std::numeric_limits<double>::infinity());
  x.masked_fill_((u >= 0.08) & (u < 0.10), std::numeric_limits<double>::infinity());
  x.masked_fill_((u >= 0.10) & (u < 0.20), -0.0);
  return x;
}

// Pooled by the layer, and its input's gradient for a loss whose gradient
// differs in every output (some of them −0).
std::pair<torch::Tensor, torch::Tensor> pool_and_gradient(torch::nn::AnyModule layer, const torch::Tensor& input) {
  auto x = input.clone().requires_grad_(true);
  auto y = layer.forward(x);
  auto g = torch::arange(y.numel(), y.options()).view(y.sizes()).sin();
  g.masked_fill_(torch::arange(y.numel()).view(y.sizes()).remainder(7) == 0, -0.0);
  y.backward(g);
  return {y.detach(), x.grad()};
}

void expect_as_torch(const torch::nn::MaxPool2dOptions& options, const torch::Tensor& input) {
  const auto [want, want_grad] = pool_and_gradient(torch::nn::AnyModule(torch::nn::MaxPool2d(options)), input);
  const auto [got, got_grad] = pool_and_gradient(torch::nn::AnyModule(nn::MaxPool2d(options)), input);
  EXPECT_TRUE(same_bits(got, want)) << "maxima differ for input " << input.sizes();
  EXPECT_TRUE(same_bits(got_grad, want_grad)) << "gradients differ for input " << input.sizes();
}

TEST(MaxPool2d, SameMaximaAndGradientsAsTorchsToTheBit) {
  const std::vector<std::vector<int64_t>> shapes = {
      {64, 32, 26, 26}, {64, 64, 11, 11}, {3, 5, 7, 4}, {2, 3, 4, 9}, {1, 1, 2, 2}, {0, 3, 6, 6}, {4, 9, 13}, {1, 5, 3}};
  int seed = 0;
  for (const auto type : {torch::kFloat, torch::kDouble})
    for (const auto& shape : shapes) {
      expect_as_torch(torch::nn::MaxPool2dOptions(2), awkward(shape, type, ++seed));
      expect_as_torch(torch::nn::MaxPool2dOptions(2), torch::randn(shape, torch::TensorOptions(type)).relu());
    }
}

// One window at a time, every order of ties and NaNs among 0, 1 and NaN:
// 3⁴ windows, each winner checked against torch's.
TEST(MaxPool2d, EveryWindowOfTiesAndNansPicksTorchsWinner) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float values[3] = {0.f, 1.f, nan};
  std::vector<float> all;
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < 3; ++c)
        for (int d = 0; d < 3; ++d) all.insert(all.end(), {values[a], values[b], values[c], values[d]});
  // window k is rows 2k, 2k + 1 of a (2 × 81) × 2 plane: all windows in one column
  const auto windows = torch::from_blob(all.data(), {81, 2, 2}).clone().view({1, 1, 162, 2});
  // distinct NaN payloads, so that which NaN won shows in the bits
  auto bits = windows.view(torch::kInt);
  bits.add_(torch::arange(bits.numel(), torch::kInt).view(bits.sizes()).mul(windows.isnan().to(torch::kInt)));
  expect_as_torch(torch::nn::MaxPool2dOptions(2), windows);
}

TEST(MaxPool2d, OtherOptionsAndInputsRunTorchs) {
  const auto x = awkward({2, 3, 9, 8}, torch::kFloat, 5);
  for (const auto& options : {torch::nn::MaxPool2dOptions(3), torch::nn::MaxPool2dOptions(2).stride(1),
                              torch::nn::MaxPool2dOptions(2).padding(1), torch::nn::MaxPool2dOptions(2).ceil_mode(true),
                              torch::nn::MaxPool2dOptions({2, 3}), torch::nn::MaxPool2dOptions(2).dilation(2)})
    expect_as_torch(options, x);
  expect_as_torch(torch::nn::MaxPool2dOptions(2), x.transpose(2, 3));                              // not contiguous
  expect_as_torch(torch::nn::MaxPool2dOptions(2), x.contiguous(at::MemoryFormat::ChannelsLast));  // NHWC
  // too small a plane: torch's error
  EXPECT_THROW(nn::MaxPool2d(2)->forward(torch::zeros({1, 1, 1, 4})), c10::Error);
  EXPECT_THROW(nn::MaxPool2d(2)->forward(torch::zeros({4})), c10::Error);
}

// Tensors not in plain row-major memory go to torch's pooling, and come out
// as torch's do. (Found by an adversarial review: each of these failed or
// differed before.)
TEST(MaxPool2d, TensorsNotInPlainMemoryAsTorchs) {
  // an MKL-DNN tensor has no data pointer
  const auto mkldnn = torch::randn({2, 3, 8, 8}).to_mkldnn();
  EXPECT_TRUE(same_bits(nn::MaxPool2d(2)->forward(mkldnn).to_dense(), torch::nn::MaxPool2d(2)->forward(mkldnn).to_dense()));
  // a 1-channel NHWC batch is contiguous either way; torch keeps it NHWC
  expect_as_torch(torch::nn::MaxPool2dOptions(2), torch::randn({8, 28, 28, 1}).permute({0, 3, 1, 2}));
  const auto nhwc = torch::randn({8, 28, 28, 1}).permute({0, 3, 1, 2});
  EXPECT_EQ(nn::MaxPool2d(2)->forward(nhwc).strides(), torch::nn::MaxPool2d(2)->forward(nhwc).strides());
  // sgn()'s backward sends a zero tensor with no storage
  auto x = torch::randn({1, 2, 4, 4}).requires_grad_(true);
  nn::MaxPool2d(2)->forward(x).sgn().sum().backward();
  EXPECT_TRUE(x.grad().equal(torch::zeros_like(x)));
  // a forward-mode tangent is carried through
  const auto level = torch::autograd::ForwardADLevel::get_next_idx();
  const auto dual = at::_make_dual(torch::randn({1, 2, 4, 4}), torch::randn({1, 2, 4, 4}), level);
  const auto ours = std::get<1>(at::_unpack_dual(nn::MaxPool2d(2)->forward(dual), level));
  const auto torchs = std::get<1>(at::_unpack_dual(torch::nn::MaxPool2d(2)->forward(dual), level));
  torch::autograd::ForwardADLevel::release_idx(level);
  ASSERT_TRUE(ours.defined());
  EXPECT_TRUE(same_bits(ours, torchs));
}

TEST(MaxPool2d, WithoutGradientsTheSameMaxima) {
  const auto x = awkward({4, 6, 10, 11}, torch::kFloat, 9);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(same_bits(nn::MaxPool2d(2)->forward(x), torch::nn::MaxPool2d(2)->forward(x)));
  EXPECT_TRUE(same_bits(nn::max_pool2d(x, torch::nn::MaxPool2dOptions(2)), torch::max_pool2d(x, {2, 2})));
}

// create_graph: the gradient is itself differentiable, as torch's: the
// second derivative of Σ (∂/∂x Σ pool(x)·w)² with respect to w.
TEST(MaxPool2d, GradientsOfGradientsAsTorchs) {
  const auto x = torch::randn({2, 3, 6, 7}, torch::kDouble).requires_grad_(true);
  auto second = [&](torch::nn::AnyModule layer) {
    torch::manual_seed(1);
    const auto w = torch::randn({2, 3, 3, 3}, torch::kDouble).requires_grad_(true);
    auto g = torch::autograd::grad({(layer.forward(x) * w).sum()}, {x}, {}, /*retain_graph=*/true,
                                   /*create_graph=*/true)[0];
    return torch::autograd::grad({g.pow(2).sum()}, {w})[0];
  };
  const auto want = second(torch::nn::AnyModule(torch::nn::MaxPool2d(2)));
  const auto got = second(torch::nn::AnyModule(nn::MaxPool2d(2)));
  EXPECT_TRUE(same_bits(got, want));
  EXPECT_GT(got.abs().sum().item<double>(), 0);
}

TEST(MaxPool2d, IsTorchsLayerToItsUsers) {
  nn::MaxPool2d layer(torch::nn::MaxPool2dOptions(2));
  std::ostringstream ours, torchs;
  ours << *layer;
  torchs << *torch::nn::MaxPool2d(2);
  EXPECT_EQ(ours.str(), torchs.str());
  EXPECT_NE(layer->as<torch::nn::MaxPool2d>(), nullptr);
  layer->eval();
  const auto copy = std::dynamic_pointer_cast<nn::MaxPool2dImpl>(layer->clone());
  ASSERT_NE(copy, nullptr) << "clone() made torch's layer, not dagr's";
  EXPECT_FALSE(copy->is_training());
}

// The built-in CNN on its poolings and on torch's, the same weights: the same
// loss and gradients, to the bit.
TEST(MaxPool2d, TheCnnComputesWhatItComputesWithTorchsPooling) {
  torch::manual_seed(3);
  auto ours = models::make_model("cnn");
  for (int i : {2, 5}) ASSERT_NE(std::dynamic_pointer_cast<nn::MaxPool2dImpl>(ours->ptr(i)), nullptr) << "layer " << i;
  namespace tnn = torch::nn;
  tnn::Sequential plain(tnn::Conv2d(tnn::Conv2dOptions(1, 32, 3)), tnn::ReLU(), tnn::MaxPool2d(2),
                        tnn::Conv2d(tnn::Conv2dOptions(32, 64, 3)), tnn::ReLU(), tnn::MaxPool2d(2), tnn::Flatten(),
                        tnn::Linear(64 * 5 * 5, 128), tnn::ReLU(), tnn::Linear(128, 10));
  {
    torch::NoGradGuard no_grad;
    auto theirs = plain->named_parameters();
    for (const auto& p : ours->named_parameters()) theirs[p.key()].copy_(p.value());
  }
  const auto x = torch::randn({16, 1, 28, 28});
  const auto y = torch::randint(0, 10, {16});
  auto run = [&](torch::nn::Sequential& model) {
    model->zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    std::vector<torch::Tensor> out{loss.detach()};
    for (const auto& p : model->parameters()) out.push_back(p.grad());
    return out;
  };
  const auto want = run(plain), got = run(ours);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(same_bits(got[i], want[i])) << "tensor " << i;
}

}  // namespace
}  // namespace dagr
