#include "dagr/torch/tensor.h"

#include "dagr/error.h"

namespace dagr {
namespace {

constexpr std::string_view kSupported = "float32, float64, float16, bfloat16, int32, int64 or uint8";

bool supported(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: case torch::kFloat64: case torch::kFloat16: case torch::kBFloat16:
    case torch::kInt32: case torch::kInt64: case torch::kUInt8:
      return true;
    default:
      return false;
  }
}

std::string describe(const torch::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  return detail::concat("dtype ", t.scalar_type(), ", device ", t.device(), ", layout ", t.layout(),
                        t.layout() == torch::kStrided && !t.is_contiguous() ? ", not contiguous" : "");
}

}  // namespace

DType dtype_of(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return DType::float32;
    case torch::kFloat64: return DType::float64;
    case torch::kFloat16: return DType::float16;
    case torch::kBFloat16: return DType::bfloat16;
    case torch::kInt32: return DType::int32;
    case torch::kInt64: return DType::int64;
    case torch::kUInt8: return DType::uint8;
    default: throw InputError(detail::concat("dagr moves tensors of ", kSupported, ", not ", type));
  }
}

DType check_tensor(const torch::Tensor& t, std::string_view what) {
  const bool ok = t.defined() && t.layout() == torch::kStrided && t.device().is_cpu() && supported(t.scalar_type()) &&
                  t.is_contiguous();
  DAGR_ENFORCE(ok, InputError, what, ": dagr needs a contiguous CPU tensor of ", kSupported, "; got ", describe(t));
  return dtype_of(t.scalar_type());
}

namespace detail {
void throw_dtype_mismatch(const torch::Tensor& t, DType expected, std::string_view what) {
  throw InputError(concat(what, ": expected a ", name(expected), " tensor; got ", describe(t)));
}
}  // namespace detail

}  // namespace dagr
