// Per-example clipping and noise shares of DP-SGD (the formulas are in dagr/train/dp_sgd.h).
#include "dagr/train/dp_sgd.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "dagr/error.h"

namespace dagr::train {
namespace {

namespace F = torch::nn::functional;

// A layer with parameters, as the forward pass met it.
struct Recorded {
  torch::nn::LinearImpl* linear = nullptr;
  torch::nn::Conv2dImpl* conv = nullptr;
  torch::Tensor input;   // a (detached)
  torch::Tensor output;  // z (in the graph)
};

// Per-example squared norms (B) and clipped sums of one layer's weight and bias.
struct LayerGradients {
  torch::Tensor norm2;
  torch::Tensor per_example_weight;  // Conv2d only: B × out × (in·kh·kw)
  torch::Tensor delta_bias;          // B × out: each example's bias gradient
};

LayerGradients layer_gradients(const Recorded& layer, const torch::Tensor& delta) {
  LayerGradients g;
  if (layer.linear) {
    g.norm2 = layer.input.square().sum(1) * delta.square().sum(1);
    g.delta_bias = delta;
  } else {
    const auto& o = layer.conv->options;
    const auto padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const auto unfolded = F::unfold(
        layer.input, F::UnfoldFuncOptions(o.kernel_size()).dilation(o.dilation()).padding(padding).stride(o.stride()));
    const auto d = delta.flatten(2);  // B × out × L
    g.per_example_weight = torch::bmm(d, unfolded.transpose(1, 2));
    g.norm2 = g.per_example_weight.square().sum({1, 2});
    g.delta_bias = d.sum(2);
  }
  if (g.delta_bias.defined()) g.norm2 = g.norm2 + g.delta_bias.square().sum(1);
  return g;
}

bool has_bias(const Recorded& layer) {
  return layer.linear ? layer.linear->options.bias() : layer.conv->options.bias();
}

}  // namespace

ClippedBatch clip_per_example(torch::nn::Sequential& model, const torch::Tensor& x, const torch::Tensor& y,
                              double clip) {
  DAGR_ENFORCE(std::isfinite(clip) && clip > 0, InputError, "DP-SGD: the clipping norm must be above 0, not ", clip);
  // Forward, layer by layer, keeping each Linear's and Conv2d's input and output.
  std::vector<Recorded> layers;
  torch::Tensor h = x;
  for (std::size_t i = 0; i < model->size(); ++i) {
    const auto module = model->ptr(i);
    Recorded r;
    r.linear = module->as<torch::nn::Linear>();
    r.conv = module->as<torch::nn::Conv2d>();
    if (r.linear || r.conv) {
      if (r.conv) {
        const auto& o = r.conv->options;
        DAGR_ENFORCE(o.groups() == 1 && c10::holds_alternative<torch::ExpandingArray<2>>(o.padding()) &&
                         c10::holds_alternative<torch::enumtype::kZeros>(o.padding_mode()),
                     InputError, "DP-SGD: Conv2d layer ", i, " needs groups 1 and numeric zero padding");
      }
      DAGR_ENFORCE(!r.linear || h.dim() == 2, InputError, "DP-SGD: Linear layer ", i, " needs 2-D input, not ",
                   h.dim(), "-D");
      r.input = h.detach();
      r.output = model->begin()[static_cast<std::ptrdiff_t>(i)].forward(h);
      h = r.output;
      layers.push_back(r);
    } else {
      DAGR_ENFORCE(module->parameters().empty(), InputError, "DP-SGD: layer ", i, " (", module->name(),
                   ") has parameters but no per-example rule (Linear and Conv2d have)");
      h = model->begin()[static_cast<std::ptrdiff_t>(i)].forward(h);
    }
  }
  const auto loss_sum = F::cross_entropy(h, y, F::CrossEntropyFuncOptions().reduction(torch::kSum));
  std::vector<torch::Tensor> outputs;
  for (const auto& r : layers) outputs.push_back(r.output);
  const auto deltas = torch::autograd::grad({loss_sum}, outputs);

  torch::NoGradGuard no_grad;
  std::vector<LayerGradients> grads;
  torch::Tensor norm2 = torch::zeros({x.size(0)}, x.options());
  for (std::size_t k = 0; k < layers.size(); ++k) {
    grads.push_back(layer_gradients(layers[k], deltas[k]));
    norm2 += grads.back().norm2;
  }
  ClippedBatch out;
  out.logits = h.detach();
  out.loss = loss_sum.detach() / static_cast<double>(x.size(0));
  out.norms = norm2.sqrt();
  const auto factor = (clip / (out.norms + 1e-6)).clamp_max(1.0);  // B
  for (std::size_t k = 0; k < layers.size(); ++k) {
    const Recorded& r = layers[k];
    const LayerGradients& g = grads[k];
    if (r.linear) {
      out.clipped_sum.push_back(torch::mm((deltas[k] * factor.unsqueeze(1)).t(), r.input));
    } else {
      const auto w = (g.per_example_weight * factor.view({-1, 1, 1})).sum(0);
      out.clipped_sum.push_back(w.view_as(r.conv->weight));
    }
    if (has_bias(r)) out.clipped_sum.push_back((g.delta_bias * factor.unsqueeze(1)).sum(0));
  }
  DAGR_ENFORCE(out.clipped_sum.size() == model->parameters().size(), InputError, "DP-SGD: the model has ",
               model->parameters().size(), " parameters, its Linear and Conv2d layers ", out.clipped_sum.size());
  return out;
}

at::Generator dp_noise_generator(std::uint64_t key, int rank, std::int64_t step) {
  // splitmix64 over the three numbers: nearby (rank, step) pairs give unrelated seeds.
  auto mix = [](std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const std::uint64_t seed = mix(mix(mix(key) ^ static_cast<std::uint64_t>(rank)) ^ static_cast<std::uint64_t>(step));
  return at::detail::createCPUGenerator(seed);
}

void add_noise_share(std::vector<torch::Tensor>& sums, double std, int shares, at::Generator& generator) {
  DAGR_ENFORCE(std >= 0 && std::isfinite(std) && shares >= 1, InputError, "DP-SGD: noise ", std, " in ", shares,
               " shares");
  const double share_std = std / std::sqrt(static_cast<double>(shares));
  if (share_std == 0) return;  // σ = 0: clipping only, nothing to draw
  torch::NoGradGuard no_grad;
  for (auto& s : sums) s.add_(torch::randn(s.sizes(), generator, s.options()), share_std);
}

void backward_with_gradients(torch::nn::Module& model, const std::vector<torch::Tensor>& gradients) {
  const auto params = model.parameters();
  DAGR_ENFORCE(params.size() == gradients.size(), InputError, "backward_with_gradients: ", gradients.size(),
               " gradients for ", params.size(), " parameters");
  torch::Tensor surrogate = torch::zeros({}, params.front().options());
  for (std::size_t k = 0; k < params.size(); ++k) surrogate = surrogate + (params[k] * gradients[k].detach()).sum();
  surrogate.backward();
}

}  // namespace dagr::train
