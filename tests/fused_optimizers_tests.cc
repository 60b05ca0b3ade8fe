// FusedAdam and FusedSgd against libtorch's Adam and SGD: the same parameters
// and state after many steps (to float rounding), state that either optimizer
// can continue from, and libtorch's own step where the loop does not apply.
#include <gtest/gtest.h>

#include "dagr/train/checkpoint.h"
#include "dagr/torch/compat.h"
#include "dagr/train/fused_optimizers.h"

namespace {

torch::nn::Sequential mlp(torch::ScalarType type) {
  torch::manual_seed(3);
  torch::nn::Sequential m(torch::nn::Linear(20, 33), torch::nn::ReLU(), torch::nn::Linear(33, 4));
  m->to(type);
  return m;
}

// `steps` steps on data that changes every step.
void train(torch::nn::Sequential& m, torch::optim::Optimizer& optimizer, int steps, int first = 0) {
  const auto type = m->parameters()[0].scalar_type();
  for (int i = first; i < first + steps; ++i) {
    optimizer.zero_grad();
    const auto x = torch::sin(torch::arange(16 * 20, type) * 0.37 * (i + 1)).reshape({16, 20});
    m->forward(x).pow(2).mean().backward();
    optimizer.step();
  }
}

// The largest difference between the two models' parameters, relative to the largest parameter.
double relative_difference(torch::nn::Sequential& a, torch::nn::Sequential& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    diff = std::max(diff, (a->parameters()[i] - b->parameters()[i]).abs().max().item<double>());
    scale = std::max(scale, a->parameters()[i].abs().max().item<double>());
  }
  return diff / scale;
}

// Steps `reference` (over a) and `fused` (over b) side by side: within
// `one_step` after one step and `tolerance` after 200, far from where they
// began, and the same state where libtorch keeps it (to `state_rtol`).
void expect_matches(torch::nn::Sequential& a, torch::optim::Optimizer& reference, torch::nn::Sequential& b,
                    torch::optim::Optimizer& fused, double one_step, double tolerance, double state_rtol) {
  train(a, reference, 1);
  train(b, fused, 1);
  EXPECT_LE(relative_difference(a, b), one_step);
  train(a, reference, 199, 1);
  train(b, fused, 199, 1);
  EXPECT_LE(relative_difference(a, b), tolerance);
  // The parameters moved far from where they began: a step that did nothing would fail above.
  auto start = mlp(a->parameters()[0].scalar_type());
  EXPECT_GT(relative_difference(start, b), 0.1);
  const auto ra = dagr::optimizer_state(reference, a->named_parameters());
  const auto rb = dagr::optimizer_state(fused, b->named_parameters());
  ASSERT_EQ(ra.size(), rb.size());
  for (const auto& [key, t] : ra) {
    ASSERT_TRUE(rb.count(key)) << key;
    EXPECT_TRUE(torch::allclose(t, rb.at(key), state_rtol, 1e-6)) << key;
  }
}

struct Case {
  torch::ScalarType type;
  double weight_decay;
  double one_step;  // the relative difference allowed after one step,
  double tolerance;  // and after 200 (rounding differences grow as the runs drift apart)
};

class FusedAdamMatches : public ::testing::TestWithParam<Case> {};

TEST_P(FusedAdamMatches, LibtorchsAdam) {
  const Case c = GetParam();
  auto a = mlp(c.type), b = mlp(c.type);
  const auto options = torch::optim::AdamOptions(1e-2).weight_decay(c.weight_decay);
  torch::optim::Adam reference(a->parameters(), options);
  dagr::FusedAdam fused(b->parameters(), options);
  expect_matches(a, reference, b, fused, c.one_step, c.tolerance, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Types, FusedAdamMatches,
                         ::testing::Values(Case{torch::kFloat32, 0, 1e-6, 1e-5}, Case{torch::kFloat32, 0.1, 1e-6, 1e-3},
                                           Case{torch::kFloat64, 0, 1e-15, 1e-12},
                                           Case{torch::kFloat64, 0.1, 1e-15, 1e-12}));

struct SgdCase {
  torch::optim::SGDOptions options;
  torch::ScalarType type;
  double tolerance;  // relative, after one step and after 200
};

class FusedSgdMatches : public ::testing::TestWithParam<SgdCase> {};

TEST_P(FusedSgdMatches, LibtorchsSgd) {
  const SgdCase c = GetParam();
  auto a = mlp(c.type), b = mlp(c.type);
  torch::optim::SGD reference(a->parameters(), c.options);
  dagr::FusedSgd fused(b->parameters(), c.options);
  expect_matches(a, reference, b, fused, c.tolerance, c.tolerance, 1e-4);
}

using Sgd = torch::optim::SGDOptions;
INSTANTIATE_TEST_SUITE_P(Options, FusedSgdMatches,
                         ::testing::Values(SgdCase{Sgd(0.05).momentum(0.9), torch::kFloat32, 1e-5},
                                           SgdCase{Sgd(0.05).momentum(0.9).weight_decay(0.01), torch::kFloat32, 1e-5},
                                           SgdCase{Sgd(0.05).momentum(0.9).nesterov(true), torch::kFloat32, 1e-5},
                                           SgdCase{Sgd(0.05).momentum(0.5).dampening(0.3), torch::kFloat32, 1e-5},
                                           SgdCase{Sgd(0.05), torch::kFloat32, 1e-5},
                                           SgdCase{Sgd(0.05).momentum(0.9), torch::kFloat64, 1e-12}));

// Trained halfway by libtorch's Adam, the state loaded into FusedAdam, trained
// on: the same as libtorch's all the way.
TEST(FusedAdam, ContinuesFromLibtorchsState) {
  auto whole = mlp(torch::kFloat32), handed = mlp(torch::kFloat32);
  torch::optim::Adam reference(whole->parameters(), torch::optim::AdamOptions(1e-2));
  train(whole, reference, 100);
  torch::optim::Adam first(handed->parameters(), torch::optim::AdamOptions(1e-2));
  train(handed, first, 50);
  dagr::FusedAdam second(handed->parameters(), torch::optim::AdamOptions(1e-2));
  const auto state = dagr::optimizer_state(first, handed->named_parameters());
  dagr::load_optimizer_state(second, handed->named_parameters(), state);
  train(handed, second, 50, 50);
  EXPECT_LE(relative_difference(whole, handed), 1e-5);
}

// amsgrad is not fused: the step is libtorch's own, bit for bit.
TEST(FusedAdam, AmsgradIsLibtorchsStep) {
  auto a = mlp(torch::kFloat32), b = mlp(torch::kFloat32);
  const auto options = torch::optim::AdamOptions(1e-2).amsgrad(true);
  torch::optim::Adam reference(a->parameters(), options);
  dagr::FusedAdam fused(b->parameters(), options);
  train(a, reference, 20);
  train(b, fused, 20);
  EXPECT_EQ(relative_difference(a, b), 0.0);
}

}  // namespace

namespace {

// What the loop cannot take is libtorch's: a closure that makes bfloat16
// gradients (decided after the closure ran), state of another shape (refused
// as libtorch refuses it, not read past its end).
TEST(FusedOptimizers, WhatTheLoopCannotTakeIsLibtorchsStep) {
  auto bf16 = [] { return torch::full({5}, 0.5, torch::kBFloat16).requires_grad_(); };
  torch::Tensor a = bf16(), b = bf16();
  torch::optim::Adam reference({a}, torch::optim::AdamOptions(0.1));
  dagr::FusedAdam fused({b}, torch::optim::AdamOptions(0.1));
  for (int i = 0; i < 2; ++i) {
    reference.step([&] { reference.zero_grad(); auto l = (a * a).sum(); l.backward(); return l; });
    const auto loss = fused.step([&] { fused.zero_grad(); auto l = (b * b).sum(); l.backward(); return l; });
    EXPECT_TRUE(loss.defined());
  }
  EXPECT_TRUE(torch::equal(a, b));

  torch::Tensor p = torch::ones({1000}).requires_grad_();
  p.mutable_grad() = torch::ones({1000});
  auto short_state = std::make_unique<torch::optim::AdamParamState>();
  short_state->exp_avg(torch::zeros({3}));
  short_state->exp_avg_sq(torch::zeros({3}));
  dagr::FusedAdam adam({p});
  adam.state()[dagr::torch_compat::optimizer_state_key(p)] = std::move(short_state);
  EXPECT_ANY_THROW(adam.step());
  auto short_buffer = std::make_unique<torch::optim::SGDParamState>();
  short_buffer->momentum_buffer(torch::zeros({3}));
  dagr::FusedSgd sgd({p}, torch::optim::SGDOptions(0.1).momentum(0.9));
  sgd.state()[dagr::torch_compat::optimizer_state_key(p)] = std::move(short_buffer);
  EXPECT_ANY_THROW(sgd.step());
}

// A step is an in-place change for autograd: a graph that saved the parameter
// before it refuses to run backward, as with libtorch's optimizers.
TEST(FusedOptimizers, AStepBumpsTheVersionCounter) {
  torch::Tensor p = torch::ones({4}).requires_grad_();
  dagr::FusedAdam adam({p});
  dagr::FusedSgd sgd({p}, torch::optim::SGDOptions(0.1).momentum(0.9));
  for (torch::optim::Optimizer* o : std::initializer_list<torch::optim::Optimizer*>{&adam, &sgd}) {
    const auto saved = (p * p).sum();  // saves p for its backward
    p.mutable_grad() = torch::ones({4});
    const auto before = p._version();
    o->step();
    EXPECT_GT(p._version(), before);
    EXPECT_ANY_THROW(saved.backward());
  }
}

}  // namespace
