// dagr::nn::MaxPool2d — torch::nn::MaxPool2d whose 2 × 2 windows run in dagr's
// own loops: libtorch 1.13's CPU max pooling of an NCHW tensor takes about
// 20 ns an output (the CNN's two poolings: 8.8 ms of its 17.5 ms step at batch
// 64, more than both convolutions' forwards), where a vectorised pass along
// the window rows takes well under 1 ns.
//
//   torch::nn::Sequential model(..., torch::nn::ReLU(), dagr::nn::MaxPool2d(2), ...);
//
// A drop-in: it is a torch::nn::MaxPool2dImpl (same options, printout; no
// parameters), and gives torch's results bit for bit: the same maxima, the
// gradient sent to the same element of each window (the first maximum in
// row-major order; a NaN wins, the last one if several), +0 elsewhere.
// dagr's loops take 2 × 2 windows with stride 2 (padding 0, dilation 1, floor
// mode) over a contiguous (NCHW) float or double CPU input of 3 or 4
// dimensions in plain memory (not MKL-DNN, named, a negative view or carrying
// a forward-mode tangent); anything else runs torch's max_pool2d. They keep, per output, which element
// of its window won (one byte, where torch keeps an int64 index); backward
// is libtorch's algorithm (zeros, each window's gradient added at its winner).
// Under create_graph, backward runs torch's differentiable
// max_pool2d_with_indices_backward with the indices rebuilt from those bytes.
#pragma once

#include <torch/torch.h>

namespace dagr::nn {

// The layer's function: torch::nn::functional::max_pool2d(input, options),
// in dagr's loops where they take the input and options.
torch::Tensor max_pool2d(const torch::Tensor& input, const torch::nn::MaxPool2dOptions& options);

class MaxPool2dImpl : public torch::nn::MaxPool2dImpl {
 public:
  using torch::nn::MaxPool2dImpl::MaxPool2dImpl;
  torch::Tensor forward(const torch::Tensor& input);
  // A dagr::nn::MaxPool2d again (torch's Cloneable would make a torch::nn::MaxPool2d).
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override;
};
TORCH_MODULE(MaxPool2d);

}  // namespace dagr::nn
