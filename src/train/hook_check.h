// DDP's per-step check values inside a hook's own collectives (GradBucket::check).
#pragma once

#include <torch/torch.h>

namespace dagr::detail {

// check[i] = sums[i] / world, in the check's own type (float32 or float64) and
// with one IEEE division, as an allreduce with ReduceOp::avg computes it (sum,
// then divide). `sums` holds the ranks' exact sums (any floating type).
inline void write_check_average(const torch::Tensor& check, const torch::Tensor& sums, int world) {
  const torch::Tensor s = sums.to(torch::kFloat64).contiguous();
  const double* from = s.data_ptr<double>();
  if (check.scalar_type() == torch::kFloat64) {
    double* to = check.data_ptr<double>();
    for (std::int64_t i = 0; i < check.numel(); ++i) to[i] = from[i] / static_cast<double>(world);
  } else {
    float* to = check.data_ptr<float>();
    for (std::int64_t i = 0; i < check.numel(); ++i) to[i] = static_cast<float>(from[i]) / static_cast<float>(world);
  }
}

}  // namespace dagr::detail
