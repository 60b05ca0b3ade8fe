// How many threads a worker computes with: libtorch's intra-op pool and
// OpenBLAS's own (Debian's libtorch calls OpenBLAS, which ignores at::set_num_threads).
#pragma once

namespace dagr {

void set_compute_threads(int threads);

}  // namespace dagr
