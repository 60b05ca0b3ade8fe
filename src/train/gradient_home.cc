#include "dagr/train/gradient_home.h"

#include <c10/util/strides.h>

#include <mutex>
#include <unordered_map>

#include "dagr/error.h"
#include "dagr/torch/compat.h"

namespace dagr {
namespace {

struct Home {
  torch::Tensor home;
  bool claimed = false;
};

std::mutex mutex;
std::unordered_map<const c10::TensorImpl*, Home>& homes() {
  static auto* map = new std::unordered_map<const c10::TensorImpl*, Home>();  // outlives every static model
  return *map;
}

}  // namespace

void set_gradient_home(const torch::Tensor& param, const torch::Tensor& home) {
  DAGR_ENFORCE(home.sizes() == param.sizes() && home.scalar_type() == param.scalar_type() && home.is_contiguous(),
               InputError, "gradient home: needs a contiguous ", param.scalar_type(), " tensor of shape ",
               param.sizes(), ", not ", home.scalar_type(), " ", home.sizes());
  std::lock_guard lock(mutex);
  homes()[param.unsafeGetTensorImpl()] = Home{home, false};
}

void clear_gradient_home(const torch::Tensor& param, const torch::Tensor& home) {
  std::lock_guard lock(mutex);
  auto it = homes().find(param.unsafeGetTensorImpl());
  if (it != homes().end() && it->second.home.data_ptr() == home.data_ptr()) homes().erase(it);
}

torch::Tensor claim_gradient_home(const torch::Tensor& param) {
  // Only where autograd would adopt the returned tensor as .grad as it is:
  // nothing there yet, no hook that sees (and may keep) it first, no graph
  // built of it (create_graph), and a plain backward (autograd::grad would
  // hand the home itself to the caller).
  if (param.grad().defined() || torch::GradMode::is_enabled() || !torch_compat::backward_accumulates_all() ||
      torch_compat::has_tensor_hooks(param))
    return {};
  std::lock_guard lock(mutex);
  auto it = homes().find(param.unsafeGetTensorImpl());
  if (it == homes().end() || it->second.claimed) return {};
  it->second.claimed = true;
  const torch::Tensor& h = it->second.home;
  return gradient_over(h, h.storage_offset(), h.sizes());
}

void release_gradient_home(const torch::Tensor& param) {
  std::lock_guard lock(mutex);
  auto it = homes().find(param.unsafeGetTensorImpl());
  if (it != homes().end()) it->second.claimed = false;
}

bool has_gradient_home(const torch::Tensor& param) {
  std::lock_guard lock(mutex);
  return homes().count(param.unsafeGetTensorImpl()) != 0;
}

torch::Tensor gradient_over(const torch::Tensor& memory, std::int64_t offset, at::IntArrayRef sizes) {
  return torch::empty({0}, memory.options()).set_(memory.storage(), offset, sizes, c10::contiguous_strides(sizes));
}

}  // namespace dagr
