#include "dagr/models/linear.h"

#include "dagr/torch/compat.h"
#include "dagr/train/gradient_home.h"

namespace dagr::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows of input (2-D) times the weight, as torch's linear does it (addmm with
// Wᵀ); backward asks for each parameter's gradient home and, given one,
// writes the product into it (mm_out / sum_out) instead of a fresh tensor.
// The products are the ones autograd runs for torch's layer (∂W = ∂yᵀ·x, in
// this order; ∂x = ∂y·W for a row-major input), so those gradients are the
// same bits. Under create_graph (grad mode on in backward) the products are
// recorded as usual and no home is claimed.
struct LinearFunction : torch::autograd::Function<LinearFunction> {
  // bias: none, or the layer's (autograd counts an undefined tensor as an input)
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& bias) {
    ctx->save_for_backward({input, weight});
    if (bias) ctx->saved_data["bias"] = *bias;
    return bias ? at::addmm(*bias, input, weight.t()) : at::mm(input, weight.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &input = saved[0], &weight = saved[1];
    const torch::Tensor& grad = grads[0];
    torch::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) grad_input = grad.mm(weight);
    if (ctx->needs_input_grad(1)) {
      grad_weight = claim_gradient_home(weight);
      if (grad_weight.defined()) at::mm_out(grad_weight, grad.t(), input);
      else grad_weight = grad.t().mm(input);
    }
    if (ctx->saved_data.count("bias") && ctx->needs_input_grad(2)) {
      grad_bias = claim_gradient_home(ctx->saved_data["bias"].toTensor());
      if (grad_bias.defined()) at::sum_out(grad_bias, grad, {0});
      else grad_bias = grad.sum(0);
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

}  // namespace

torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  // Without a home to write into (no DDP, or a group of one), a graph to
  // record, or under autocast (whose casts autograd must record, and the
  // function would not), torch's own linear: autograd's own nodes.
  const bool records = torch::GradMode::is_enabled() &&
                       (input.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  const bool homed = has_gradient_home(weight) || (bias.defined() && has_gradient_home(bias));
  if (!records || !homed || input.dim() == 0 || torch_compat::cpu_autocast_enabled())
    return torch::nn::functional::linear(input, weight, bias);
  const auto b = bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt;
  if (input.dim() == 2) return LinearFunction::apply(input, weight, b);
  auto out_shape = input.sizes().vec();
  out_shape.back() = weight.size(0);
  return LinearFunction::apply(input.reshape({-1, input.size(-1)}), weight, b).view(out_shape);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& input) { return linear(input, weight, bias); }

// As torch's Cloneable: a fresh layer of the same options, its parameters
// set to copies of these (on `device` if given), in the same mode.
std::shared_ptr<torch::nn::Module> LinearImpl::clone(const c10::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  auto copy = std::make_shared<LinearImpl>(options);
  auto theirs = copy->named_parameters(/*recurse=*/false);
  for (const auto& item : named_parameters(/*recurse=*/false)) {
    const torch::Tensor& t = item.value();
    theirs[item.key()].set_data(device && t.device() != *device ? t.to(*device) : t.clone());
  }
  copy->train(is_training());
  return copy;
}

}  // namespace dagr::nn
