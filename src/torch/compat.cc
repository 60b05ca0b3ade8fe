#include "dagr/torch/compat.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>

namespace dagr::torch_compat {
namespace {

namespace autograd = torch::autograd;

struct Hook : autograd::FunctionPostHook {
  std::function<void()> ready;
  explicit Hook(std::function<void()> f) : ready(std::move(f)) {}
  autograd::variable_list operator()(const autograd::variable_list& outputs, const autograd::variable_list&) override {
    ready();
    return outputs;
  }
};

}  // namespace

std::shared_ptr<void> on_gradient_accumulated(const torch::Tensor& param, std::function<void()> ready) {
  auto accumulator = autograd::impl::grad_accumulator(param);
  accumulator->add_post_hook(std::make_unique<Hook>(std::move(ready)));
  return accumulator;
}

void at_end_of_backward(std::function<void()> callback) {
  autograd::Engine::get_default_engine().queue_callback(std::move(callback));
}

}  // namespace dagr::torch_compat
