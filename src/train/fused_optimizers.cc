#include "dagr/train/fused_optimizers.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <memory>
#include <type_traits>

#include "dagr/torch/compat.h"

namespace dagr {
namespace {

// The constants of one parameter's step, computed in double as libtorch
// computes them and then rounded to the parameter's type.
template <class T>
struct AdamStep {
  T beta1, beta2, one_minus_beta1, one_minus_beta2, weight_decay, eps;
  T bias2_sqrt;  // √(1 − β₂ᵗ)
  T step_size;   // lr / (1 − β₁ᵗ)
};

// The element loops below are compiled three times — for AVX-512, AVX2 and
// plain x86-64 — and the loader picks the widest the CPU has (GCC's
// target_clones). Each loop makes no calls (sqrt is an instruction here: this
// file is compiled without errno for math functions) and has no branch: a
// choice that is the same for every element (weight decay, momentum, ...) is a
// template parameter, made once per parameter by `choose` below, so the loops
// vectorise. This file is also compiled without contracting a·b + c into one
// fused multiply-add, so every clone rounds as the plain one does, and as
// libtorch's separate operations do.
#define DAGR_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// Calls f with one std::true_type or std::false_type per run-time bool, as
// each says: choices turned into compile-time ones, for a loop compiled for
// each combination.
template <class F>
void choose(F&& f) {
  f();
}
template <class F, class... Rest>
void choose(F&& f, bool b, Rest... rest) {
  auto with = [&](auto flag) { choose([&](auto... more) { f(flag, more...); }, rest...); };
  if (b)
    with(std::true_type{});
  else
    with(std::false_type{});
}

// libtorch's Adam for elements [begin, end), its tensor operations in order:
//   g  = g + wd·p                  (grad.add(p, wd), when wd ≠ 0)
//   m  = m·β₁ + (1 − β₁)·g         (exp_avg.mul_(β₁).add_(g, 1 − β₁))
//   v  = v·β₂ + (1 − β₂)·g·g       (exp_avg_sq.mul_(β₂).addcmul_(g, g, 1 − β₂))
//   p  = p − step_size · m / (√v / √(1 − β₂ᵗ) + eps)
template <class T, bool kDecay>
DAGR_VECTOR_CLONES void adam_elements(const AdamStep<T> c, T* __restrict p, const T* __restrict g,
                                      T* __restrict m, T* __restrict v, std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) {
    const T grad = kDecay ? g[i] + c.weight_decay * p[i] : g[i];
    const T mi = m[i] * c.beta1 + c.one_minus_beta1 * grad;
    const T vi = v[i] * c.beta2 + c.one_minus_beta2 * (grad * grad);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - c.step_size * (mi / (std::sqrt(vi) / c.bias2_sqrt + c.eps));
  }
}

// The constants of one parameter's SGD step, as AdamStep's.
template <class T>
struct SgdStep {
  T lr, momentum, keep, weight_decay;  // keep = 1 − dampening
};

// libtorch's SGD for elements [begin, end), its tensor operations in order:
//   g = g + wd·p                            (when wd ≠ 0)
//   b = g on the first step, else b·μ + (1 − dampening)·g   (with momentum μ ≠ 0)
//   d = g + μ·b with Nesterov, else b       (g without momentum)
//   p = p − lr·d
template <class T, bool kDecay, bool kMomentum, bool kFirst, bool kNesterov>
DAGR_VECTOR_CLONES void sgd_elements(const SgdStep<T> c, T* __restrict p, const T* __restrict g, T* __restrict b,
                                     std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) {
    const T grad = kDecay ? g[i] + c.weight_decay * p[i] : g[i];
    T d = grad;
    if constexpr (kMomentum) {
      const T bi = kFirst ? grad : b[i] * c.momentum + c.keep * grad;
      b[i] = bi;
      d = kNesterov ? grad + c.momentum * bi : bi;
    }
    p[i] = p[i] + (-c.lr) * d;
  }
}

// Whether one loop can step p: a CPU tensor of float32 or float64, its
// gradient and each of its state tensors (none before its first step) of the
// same dtype and shape, contiguous. Anything else is libtorch's to step (or to
// refuse, as for state of another shape).
bool fusable(const torch::Tensor& p, std::initializer_list<torch::Tensor> state) {
  if (!p.grad().defined()) return true;  // not stepped
  auto same = [&](const torch::Tensor& t) {
    return t.defined() && t.scalar_type() == p.scalar_type() && t.sizes() == p.sizes() && t.device() == p.device() &&
           t.is_contiguous() && !t.is_sparse();
  };
  bool ok = (p.scalar_type() == torch::kFloat32 || p.scalar_type() == torch::kFloat64) && p.device().is_cpu() &&
            same(p) && same(p.grad());
  for (const torch::Tensor& t : state) ok = ok && same(t);
  return ok;
}

// Runs f(begin, end) over [0, n) on torch's intra-op threads.
template <class F>
void for_elements(std::int64_t n, F&& f) {
  at::parallel_for(0, n, 1 << 15, f);
}

// Writing through data pointers bypasses autograd's version counters; bumped
// as an in-place operation would, so a graph that saved these tensors before
// the step still refuses to run backward through them.
void written(std::initializer_list<torch::Tensor> tensors) {
  for (const torch::Tensor& t : tensors) t.unsafeGetTensorImpl()->bump_version();
}

// The closure's loss, computed with gradients on, as libtorch's optimizers do.
torch::Tensor run_closure(const torch::optim::Optimizer::LossClosure& closure) {
  if (!closure) return {};
  torch::AutoGradMode enable_grad(true);
  return closure();
}

using States = ska::flat_hash_map<torch_compat::OptimizerStateKey, std::unique_ptr<torch::optim::OptimizerParamState>>;

// Whether the state of `states` for p is of type State, or absent.
template <class State>
bool absent_or(const States& states, const torch::Tensor& p, const State*& state) {
  const auto it = states.find(torch_compat::optimizer_state_key(p));
  state = it == states.end() ? nullptr : dynamic_cast<const State*>(it->second.get());
  return it == states.end() || state;
}

// Whether f(group's options, p) holds for every parameter p of every group.
template <class Options, class F>
bool every_parameter(const std::vector<torch::optim::OptimizerParamGroup>& groups, F f) {
  for (const auto& group : groups)
    for (const auto& p : group.params())
      if (!f(static_cast<const Options&>(group.options()), p)) return false;
  return true;
}

}  // namespace

// The closure first: the gradients it makes decide whether the loop applies.
torch::Tensor FusedAdam::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = run_closure(closure);
  const bool fused = every_parameter<torch::optim::AdamOptions>(param_groups_, [&](const auto& o, const auto& p) {
    const torch::optim::AdamParamState* state = nullptr;
    return !o.amsgrad() && absent_or(state_, p, state) &&
           (state ? fusable(p, {state->exp_avg(), state->exp_avg_sq()}) : fusable(p, {}));
  });
  if (!fused) {
    torch::optim::Adam::step();
    return loss;
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
                                   .one_minus_beta1 = static_cast<scalar_t>(1 - beta1),
                                   .one_minus_beta2 = static_cast<scalar_t>(1 - beta2),
                                   .weight_decay = static_cast<scalar_t>(options.weight_decay()),
                                   .eps = static_cast<scalar_t>(options.eps()),
                                   .bias2_sqrt = static_cast<scalar_t>(std::sqrt(bias2)),
                                   .step_size = static_cast<scalar_t>(options.lr() / bias1)};
        scalar_t* pd = p.data_ptr<scalar_t>();
        const scalar_t* gd = grad.data_ptr<scalar_t>();
        scalar_t* md = state.exp_avg().data_ptr<scalar_t>();
        scalar_t* vd = state.exp_avg_sq().data_ptr<scalar_t>();
        choose([&](auto decay) {
          for_elements(p.numel(), [&](std::int64_t begin, std::int64_t end) {
            adam_elements<scalar_t, decltype(decay)::value>(c, pd, gd, md, vd, begin, end);
          });
        }, options.weight_decay() != 0);
      });
      written({p, state.exp_avg(), state.exp_avg_sq()});
    }
  }
  return loss;
}

torch::Tensor FusedSgd::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = run_closure(closure);
  const bool fused = every_parameter<torch::optim::SGDOptions>(param_groups_, [&](const auto& o, const auto& p) {
    const torch::optim::SGDParamState* state = nullptr;
    return absent_or(state_, p, state) &&
           (state && o.momentum() != 0 ? fusable(p, {state->momentum_buffer()}) : fusable(p, {}));
  });
  if (!fused) {
    torch::optim::SGD::step();
    return loss;
  }
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::SGDOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::Tensor buffer;
      bool first = false;
      if (options.momentum() != 0) {
        auto& slot = state_[torch_compat::optimizer_state_key(p)];
        if (!slot) {  // libtorch starts the buffer as a copy of the gradient
          auto fresh = std::make_unique<torch::optim::SGDParamState>();
          fresh->momentum_buffer(torch::empty_like(p, torch::MemoryFormat::Contiguous));
          slot = std::move(fresh);
          first = true;
        }
        buffer = static_cast<torch::optim::SGDParamState&>(*slot).momentum_buffer();
      }
      torch::Tensor grad = p.grad();
      AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "FusedSgd", [&] {
        const SgdStep<scalar_t> c{.lr = static_cast<scalar_t>(options.lr()),
                                  .momentum = static_cast<scalar_t>(options.momentum()),
                                  .keep = static_cast<scalar_t>(1 - options.dampening()),
                                  .weight_decay = static_cast<scalar_t>(options.weight_decay())};
        scalar_t* pd = p.data_ptr<scalar_t>();
        const scalar_t* gd = grad.data_ptr<scalar_t>();
        scalar_t* bd = buffer.defined() ? buffer.data_ptr<scalar_t>() : nullptr;
        choose([&](auto decay, auto momentum, auto fresh, auto nesterov) {
          for_elements(p.numel(), [&](std::int64_t begin, std::int64_t end) {
            sgd_elements<scalar_t, decltype(decay)::value, decltype(momentum)::value, decltype(fresh)::value,
                         decltype(nesterov)::value>(c, pd, gd, bd, begin, end);
          });
        }, options.weight_decay() != 0, bd != nullptr, first, options.nesterov());
      });
      written({p});
      if (buffer.defined()) written({buffer});
    }
  }
  return loss;
}

}  // namespace dagr
