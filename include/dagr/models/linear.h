// dagr::nn::Linear — torch::nn::Linear whose backward writes the weight's and
// the bias's gradients straight into their homes (train/gradient_home.h): DDP's
// flat buckets, so DDP copies no gradient of this layer into a bucket.
//
//   torch::nn::Sequential model(torch::nn::Flatten(), dagr::nn::Linear(784, 256), torch::nn::ReLU(), ...);
//
// A drop-in: it is a torch::nn::LinearImpl (same options, parameters, names,
// initialisation and printout; module->as<torch::nn::Linear>() finds it), and
// computes what torch's does with the same matrix products: y = x·Wᵀ + b,
// ∂W = ∂yᵀ·x, ∂b = Σ ∂y over the rows, ∂x = ∂y·W (the same bits for 2-D
// row-major inputs). Inputs of any rank ≥ 1 (the last dimension is the
// features). Where neither parameter has a home (no DDP, or a group of one),
// under no_grad or under autocast it runs torch's own linear. A gradient goes
// into its home only where autograd would adopt it as .grad unchanged
// (gradient_home.h): a parameter that already holds a gradient, has a hook, or
// a backward with create_graph or through autograd::grad gets autograd's usual
// tensors, and DDP copies as for any layer.
#pragma once

#include <torch/torch.h>

namespace dagr::nn {

// The layer's function: input (…, in), weight (out, in), bias (out) or undefined.
torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias = {});

class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& input);
  // A dagr::nn::Linear again (torch's Cloneable would make a torch::nn::Linear).
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override;
};
TORCH_MODULE(Linear);

}  // namespace dagr::nn
