// The seam between dagr and libtorch's versions: every libtorch call whose
// spelling differs between the versions dagr supports (Debian's 1.13 and 2.x)
// goes through here, and nowhere else in dagr names it. docs/DECISIONS.md
// ("libtorch versions") lists what differs and why each choice below holds
// for both.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>

namespace dagr::torch_compat {

namespace detail {
template <class> struct FirstArgument;
template <class C, class R, class A>
struct FirstArgument<R (C::*)(A)> {
  using type = A;
};
template <class> struct Result;
template <class C, class R, class A>
struct Result<R (C::*)(A)> {
  using type = R;
};
}  // namespace detail

// The optional types of torch's Sampler interface: c10::optional (its own
// class) in 1.13, std::optional in later 2.x releases. Read off the interface
// itself, so an override matches whichever this libtorch declares. SizeOptional is also
// what a torch data set's size() returns.
using Sampler = torch::data::samplers::Sampler<>;
using SizeOptional = detail::FirstArgument<decltype(&Sampler::reset)>::type;
using BatchOptional = detail::Result<decltype(&Sampler::next)>::type;

// A tensor's first element, writable (2.1 added mutable_data_ptr() and may
// deprecate data_ptr() on const tensors; data_ptr() is in both).
inline void* mutable_data(const torch::Tensor& t) { return t.data_ptr(); }

// The key an optimizer files a parameter's state under (Optimizer::state()):
// the TensorImpl's address printed as a string in 1.13, the address itself in
// 2.x. Read off the map's own key type, so it matches whichever this libtorch
// declares.
using OptimizerStateKey = std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;
template <class Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;  // what 1.13's c10::guts::to_string does
    s << param.unsafeGetTensorImpl();
    return s.str();
  } else {
    return param.unsafeGetTensorImpl();
  }
}

// Runs `ready` each time autograd has accumulated `param`'s gradient (a post
// hook on its gradient accumulator; 2.1 also offers
// register_post_accumulate_grad_hook). The returned handle keeps the
// accumulator, and so the hook, alive.
std::shared_ptr<void> on_gradient_accumulated(const torch::Tensor& param, std::function<void()> ready);

// Runs `callback` when the current backward pass has finished (autograd's
// engine callback queue); only valid while a backward pass runs.
void at_end_of_backward(std::function<void()> callback);

// Inside a backward pass: whether it runs for every leaf's .grad, as a plain
// backward() does (not autograd::grad, nor backward(inputs=...), which compute
// only what their inputs need, and grad() returns the tensors instead of
// accumulating them). The current graph task's execution map is then empty.
bool backward_accumulates_all();

// Whether `t` has hooks registered on it (Tensor::register_hook), which see,
// and may keep, its gradient before it is accumulated.
bool has_tensor_hooks(const torch::Tensor& t);

// Whether CPU autocast is on (at::autocast::is_cpu_enabled in 1.13, deprecated
// for is_autocast_enabled(kCPU) in 2.4).
bool cpu_autocast_enabled();

}  // namespace dagr::torch_compat
