// Counting a batch's correct predictions.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace dagr {

// How many rows of `logits` (N × C) have their largest value at the index
// `labels` (N, int64) gives: logits.argmax(1).eq(labels).sum(), with argmax's
// rules (the first largest on ties; a NaN counts as the largest).
std::int64_t correct_predictions(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace dagr
