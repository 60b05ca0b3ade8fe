// torch::Tensor as a buffer dagr can move: the one place where a tensor's
// dtype, device and layout are checked and its elements become a std::span.
//
//   auto grads = dagr::span_of<float>(t);   // InputError unless t is a contiguous CPU float32 tensor
//
// dagr moves dense (strided), contiguous CPU tensors of the dtypes of
// dagr::DType: float32, float64, float16, bfloat16, int32, int64, uint8. Any
// other tensor is an InputError that names its dtype, device and layout.
#pragma once

#include <torch/torch.h>

#include <span>
#include <string_view>

#include "dagr/comm/dtype.h"
#include "dagr/torch/compat.h"

namespace dagr {

// The torch dtype of an element type, and back (InputError for a dtype dagr does not move).
template <Element T>
constexpr torch::ScalarType torch_dtype_of() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) return torch::kFloat32;
  else if constexpr (std::is_same_v<U, double>) return torch::kFloat64;
  else if constexpr (std::is_same_v<U, Half>) return torch::kFloat16;
  else if constexpr (std::is_same_v<U, BFloat16>) return torch::kBFloat16;
  else if constexpr (std::is_same_v<U, std::int32_t>) return torch::kInt32;
  else if constexpr (std::is_same_v<U, std::int64_t>) return torch::kInt64;
  else return torch::kUInt8;
}
DType dtype_of(torch::ScalarType type);

// InputError naming `what`, and t's dtype, device and layout, unless t is a
// contiguous CPU tensor of a dtype dagr moves; its DType otherwise.
DType check_tensor(const torch::Tensor& t, std::string_view what);

namespace detail {
[[noreturn]] void throw_dtype_mismatch(const torch::Tensor& t, DType expected, std::string_view what);
}

// t's elements as T: t must pass check_tensor and hold T (InputError otherwise).
template <Element T>
std::span<T> span_of(const torch::Tensor& t, std::string_view what = "tensor") {
  const DType got = check_tensor(t, what);
  if (got != dtype_of<T>()) detail::throw_dtype_mismatch(t, dtype_of<T>(), what);
  return {static_cast<T*>(torch_compat::mutable_data(t)), static_cast<std::size_t>(t.numel())};
}

// Calls f(std::span<T>) with T the element type of t (which must pass check_tensor).
template <class F>
decltype(auto) visit_span(const torch::Tensor& t, std::string_view what, F&& f) {
  switch (check_tensor(t, what)) {
    case DType::float32: return f(span_of<float>(t, what));
    case DType::float64: return f(span_of<double>(t, what));
    case DType::float16: return f(span_of<Half>(t, what));
    case DType::bfloat16: return f(span_of<BFloat16>(t, what));
    case DType::int32: return f(span_of<std::int32_t>(t, what));
    case DType::int64: return f(span_of<std::int64_t>(t, what));
    case DType::uint8: break;
  }
  return f(span_of<std::uint8_t>(t, what));
}

}  // namespace dagr
