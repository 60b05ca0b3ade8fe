// `dagr bench maxpool`: the built-in CNN's two poolings, torch's max_pool2d
// beside dagr::nn::MaxPool2d, forward and backward, in one process.
#pragma once

#include <cstdint>

namespace dagr::cli {

struct PoolBenchSpec {
  std::int64_t batch = 64;
  int iters = 50;
};

// Prints the table (or JSON lines); returns the exit status.
int bench_maxpool(const PoolBenchSpec& spec, bool json);

}  // namespace dagr::cli
