// `dagr bench linear`: one F×F linear layer's forward, dense on one rank and
// tensor-parallel (column- and row-parallel) on all ranks, side by side in one run.
#pragma once

#include <cstdint>

namespace dagr::cli {

struct LinearBenchSpec {
  std::int64_t features = 8192;
  std::int64_t batch = 64;
  int iters = 20;
};

// Run by every rank; rank 0 prints the table. Returns the exit status.
int bench_linear(const LinearBenchSpec& spec, bool json);

}  // namespace dagr::cli
