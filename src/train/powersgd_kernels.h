// PowerSGD's arithmetic on one n × m gradient matrix, as loops over raw
// memory. A step of PowerSGD is a handful of products of a large matrix with
// thin ones (rank r, usually 1 to 4): as libtorch operations that is a few
// dozen calls whose dispatch costs more than their arithmetic, and passes over
// the matrix that a fused loop does in fewer. Matrices are row-major: A and M
// are n × m, P is n × r and Q is m × r, as PowerSGD writes them.
//
// The results do not depend on the CPU: every loop is compiled for AVX-512,
// AVX2 and plain x86-64, each rounding alike (sums in a fixed order, no fused
// multiply-adds), so ranks on different machines rebuild the same gradient
// from the same P and Q.
#pragma once

#include <cstdint>

namespace dagr::powersgd {

// P = A Q. With `error` (error feedback), A = M + E, written over M (the
// gradient, which the step replaces anyway); without, A = M. E itself is left
// alone until reconstruct(): a step whose collectives fail leaves the error as
// it was (and only a gradient that is not used).
template <class T>
void project(T* m, const T* error, const T* q, T* p, std::int64_t n, std::int64_t cols, std::int64_t r);

// Q = Aᵀ P, with A what project() left in M.
template <class T>
void project_back(const T* a, const T* p, T* q, std::int64_t n, std::int64_t cols, std::int64_t r);

// M̂ = P Qᵀ (the approximation) over M, and with `error`, E = A − M̂ first
// (A still in M): what this step left out, for the next to carry.
template <class T>
void reconstruct(T* m, T* error, const T* p, const T* q, std::int64_t n, std::int64_t cols, std::int64_t r);

// Gram-Schmidt on the r columns of a (n × r), in place, as PyTorch's
// _orthogonalize_gram_schmidt; a column that is all zeros stays zero (the
// approximation then has that much lower rank) instead of becoming NaN.
template <class T>
void orthogonalize(T* a, std::int64_t n, std::int64_t r);

}  // namespace dagr::powersgd
