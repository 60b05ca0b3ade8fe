#include "dagr/train/fused_adam.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <memory>

#include "dagr/torch/compat.h"

namespace dagr {
namespace {

// The constants of one parameter's step, in the parameter's type.
template <class T>
struct AdamStep {
  T beta1, beta2, weight_decay, eps;
  T bias2_sqrt;  // √(1 − β₂ᵗ)
  T step_size;   // lr / (1 − β₁ᵗ)
};

// libtorch's Adam for elements [begin, end), its tensor operations in order:
//   g  = g + wd·p                  (grad.add(p, wd), when wd ≠ 0)
//   m  = m·β₁ + (1 − β₁)·g         (exp_avg.mul_(β₁).add_(g, 1 − β₁))
//   v  = v·β₂ + (1 − β₂)·g·g       (exp_avg_sq.mul_(β₂).addcmul_(g, g, 1 − β₂))
//   p  = p − step_size · m / (√v / √(1 − β₂ᵗ) + eps)
// The loop has no branches and no calls (sqrt is an instruction here: this
// file is compiled without errno for math functions), so it vectorises.
template <class T>
void adam_elements(const AdamStep<T>& c, T* __restrict p, const T* __restrict g, T* __restrict m,
                   T* __restrict v, std::int64_t begin, std::int64_t end) {
  const T one_minus_beta1 = 1 - c.beta1, one_minus_beta2 = 1 - c.beta2;
  for (std::int64_t i = begin; i < end; ++i) {
    const T grad = c.weight_decay != 0 ? g[i] + c.weight_decay * p[i] : g[i];
    const T mi = m[i] * c.beta1 + one_minus_beta1 * grad;
    const T vi = v[i] * c.beta2 + one_minus_beta2 * (grad * grad);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - c.step_size * (mi / (std::sqrt(vi) / c.bias2_sqrt + c.eps));
  }
}

template <class T>
void adam_tensor(const AdamStep<T>& c, torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m,
                 torch::Tensor& v) {
  T* pd = p.data_ptr<T>();
  const T* gd = g.data_ptr<T>();
  T* md = m.data_ptr<T>();
  T* vd = v.data_ptr<T>();
  at::parallel_for(0, p.numel(), 1 << 15,
                   [&](std::int64_t begin, std::int64_t end) { adam_elements(c, pd, gd, md, vd, begin, end); });
}

// Whether one loop can step p: plain Adam, a CPU tensor of float32 or float64
// laid out as its gradient and its state (if it has any yet).
bool fusable(const torch::Tensor& p, const torch::optim::AdamOptions& options,
             const torch::optim::OptimizerParamState* state) {
  if (options.amsgrad()) return false;
  if (!p.grad().defined()) return true;  // not stepped
  const auto type = p.scalar_type();
  auto same = [&](const torch::Tensor& t) { return t.scalar_type() == type && t.is_contiguous() && !t.is_sparse(); };
  const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(state);
  return (type == torch::kFloat32 || type == torch::kFloat64) && p.device().is_cpu() && same(p) && same(p.grad()) &&
         (!state || (adam && same(adam->exp_avg()) && same(adam->exp_avg_sq())));
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  for (const auto& group : param_groups_)
    for (const auto& p : group.params()) {
      const auto it = state_.find(torch_compat::optimizer_state_key(p));
      if (!fusable(p, static_cast<const torch::optim::AdamOptions&>(group.options()),
                   it == state_.end() ? nullptr : it->second.get()))
        return torch::optim::Adam::step(std::move(closure));
    }

  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state_[torch_compat::optimizer_state_key(p)];
      if (!slot) {  // as libtorch's Adam starts a parameter's state
        auto fresh = std::make_unique<torch::optim::AdamParamState>();
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& state = static_cast<torch::optim::AdamParamState&>(*slot);
      state.step(state.step() + 1);
      const auto [beta1, beta2] = options.betas();
      const double bias1 = 1 - std::pow(beta1, state.step()), bias2 = 1 - std::pow(beta2, state.step());
      torch::Tensor grad = p.grad();
      AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "FusedAdam", [&] {
        const AdamStep<scalar_t> c{.beta1 = static_cast<scalar_t>(beta1),
                                   .beta2 = static_cast<scalar_t>(beta2),
                                   .weight_decay = static_cast<scalar_t>(options.weight_decay()),
                                   .eps = static_cast<scalar_t>(options.eps()),
                                   .bias2_sqrt = static_cast<scalar_t>(std::sqrt(bias2)),
                                   .step_size = static_cast<scalar_t>(options.lr() / bias1)};
        adam_tensor(c, p, grad, state.exp_avg(), state.exp_avg_sq());
      });
    }
  }
  return loss;
}

}  // namespace dagr
