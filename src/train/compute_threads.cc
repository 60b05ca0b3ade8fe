#include "dagr/train/compute_threads.h"

#include <torch/torch.h>

// Weak: absent when libtorch runs on another BLAS.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace dagr {

void set_compute_threads(int threads) {
  at::set_num_threads(threads);
  if (openblas_set_num_threads) openblas_set_num_threads(threads);
}

}  // namespace dagr
