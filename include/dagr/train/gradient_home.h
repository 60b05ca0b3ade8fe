// Where a parameter's gradient is wanted: its "home", a tensor of its shape and
// dtype that DDP reduces in place (the parameter's slice of a flat bucket).
//
// DDP keeps every gradient in its bucket. Autograd's own layers compute a
// weight's gradient into a fresh tensor, which DDP then copies into the bucket:
// for the built-in MLP's 784×256 weight, 0.8 MB read and written every step
// (~80 µs, 8 % of a 2-worker step). A layer that computes its gradients itself
// (dagr::nn::Linear, models/linear.h) asks here for the home and writes the
// gradient straight into it, and the copy goes away.
//
// The protocol, for a layer's backward that produces param's gradient:
//   torch::Tensor home = claim_gradient_home(param);   // undefined: none to use
//   if (home.defined()) at::mm_out(home, ...); else grad = at::mm(...);
// and return `home` (or grad) as the gradient. A home is handed out only where
// autograd will adopt the returned tensor as .grad as it is: the parameter
// holds no gradient (none to add it to) and has no register_hook hook (which
// sees, and may keep, it first), the backward builds no graph (create_graph)
// and is a plain backward() (autograd::grad would hand the home itself to its
// caller). And only once until the owner releases it after the gradient was
// accumulated: a weight used twice in one forward gets its home in one backward
// call and a fresh tensor in the other, which autograd adds. Each claim returns
// a new tensor sharing the home's memory, so autograd holds the only reference
// and adopts it without a copy.
//
// The owner (DDP) sets homes, releases each after the parameter's gradient was
// accumulated (or the backward was given up), and clears them when it goes.
// Process-wide and thread-safe; keyed by the parameter's TensorImpl, so each
// model instance (and each rank's, with ranks as threads) has its own.
#pragma once

#include <torch/torch.h>

namespace dagr {

// `home` must have param's shape and dtype and be contiguous.
void set_gradient_home(const torch::Tensor& param, const torch::Tensor& home);
// Forgets param's home if it is still `home` (a later owner's stays).
void clear_gradient_home(const torch::Tensor& param, const torch::Tensor& home);
// param's home, claimed, where the above allows; else an undefined tensor.
torch::Tensor claim_gradient_home(const torch::Tensor& param);
// Makes param's home available again (no-op without a home).
void release_gradient_home(const torch::Tensor& param);
// Whether param has a home (claimed or not).
bool has_gradient_home(const torch::Tensor& param);

// A contiguous tensor of `sizes` over `memory`'s storage from element `offset`,
// of its own: not an autograd view (libtorch 1.13's zero_grad cannot detach_
// one) and referenced by nobody else (autograd adopts it as .grad as it is).
// What DDP points .grad at, and what a claim returns.
torch::Tensor gradient_over(const torch::Tensor& memory, std::int64_t offset, at::IntArrayRef sizes);

}  // namespace dagr
