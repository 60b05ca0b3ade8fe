#include "dagr/torch/compat.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

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

bool backward_accumulates_all() {
  const auto* exec_info = autograd::get_current_graph_task_exec_info();
  return exec_info == nullptr || exec_info->empty();
}

bool has_tensor_hooks(const torch::Tensor& t) { return !autograd::impl::hooks(t).empty(); }

bool cpu_autocast_enabled() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(at::kCPU);
#else
  return at::autocast::is_cpu_enabled();
#endif
}

}  // namespace dagr::torch_compat
