#include "train/powersgd_kernels.h"

#include <cmath>
#include <vector>

namespace dagr::powersgd {
namespace {

// Each loop is compiled for AVX-512, AVX2 and plain x86-64; the loader picks
// the widest the CPU has (GCC's target_clones). A sum over a row runs in
// kLanes partial sums, added up in a fixed order at the end: the same
// operations in the same order whatever the vector width, so every clone gives
// the same bits (this file is compiled without fused multiply-adds).
#define DAGR_POWERSGD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
constexpr int kLanes = 16;

// Q (cols × r) as r rows of cols: each column of Q contiguous.
template <class T>
std::vector<T> transposed(const T* q, std::int64_t cols, std::int64_t r) {
  std::vector<T> qt(static_cast<std::size_t>(cols * r));
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t k = 0; k < r; ++k) qt[static_cast<std::size_t>(k * cols + j)] = q[j * r + k];
  return qt;
}

// Row by row: the row of A (with error feedback M + E, written over M's row
// first) stays in the L1 cache for its r dot products with Q's columns.
template <class T>
DAGR_POWERSGD_CLONES void project_rows(T* __restrict m, const T* __restrict error, const T* __restrict qt,
                                       T* __restrict p, std::int64_t n, std::int64_t cols, std::int64_t r) {
  for (std::int64_t i = 0; i < n; ++i) {
    T* a = m + i * cols;
    if (error) {
      const T* e = error + i * cols;
      for (std::int64_t j = 0; j < cols; ++j) a[j] += e[j];
    }
    for (std::int64_t k = 0; k < r; ++k) {
      const T* column = qt + k * cols;
      T partial[kLanes] = {};
      std::int64_t j = 0;
      for (; j + kLanes <= cols; j += kLanes)
        for (int l = 0; l < kLanes; ++l) partial[l] += a[j + l] * column[j + l];
      T sum = 0;
      for (; j < cols; ++j) sum += a[j] * column[j];
      for (int l = 0; l < kLanes; ++l) sum += partial[l];
      p[i * r + k] = sum;
    }
  }
}

// Qᵀ += P[i, k] · A's row i, for each i in order: a sum over the rows, each
// element's in the same order whatever the vector width.
template <class T>
DAGR_POWERSGD_CLONES void project_back_rows(const T* __restrict a, const T* __restrict p, T* __restrict qt,
                                            std::int64_t n, std::int64_t cols, std::int64_t r) {
  for (std::int64_t j = 0; j < cols * r; ++j) qt[j] = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T* row = a + i * cols;
    for (std::int64_t k = 0; k < r; ++k) {
      const T weight = p[i * r + k];
      T* out = qt + k * cols;
      for (std::int64_t j = 0; j < cols; ++j) out[j] += weight * row[j];
    }
  }
}

// Row by row: the row of P Qᵀ into `row` (L1-sized scratch), then, with
// error feedback, E = A − P Qᵀ from the A in M's row, and the row over M.
template <class T>
DAGR_POWERSGD_CLONES void reconstruct_rows(T* __restrict m, T* __restrict error, const T* __restrict p,
                                           const T* __restrict qt, T* __restrict row, std::int64_t n,
                                           std::int64_t cols, std::int64_t r) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T* weights = p + i * r;
    for (std::int64_t j = 0; j < cols; ++j) row[j] = weights[0] * qt[j];
    for (std::int64_t k = 1; k < r; ++k)
      for (std::int64_t j = 0; j < cols; ++j) row[j] += weights[k] * qt[k * cols + j];
    T* out = m + i * cols;
    if (error) {
      T* e = error + i * cols;
      for (std::int64_t j = 0; j < cols; ++j) e[j] = out[j] - row[j];
    }
    for (std::int64_t j = 0; j < cols; ++j) out[j] = row[j];
  }
}

}  // namespace

template <class T>
void project(T* m, const T* error, const T* q, T* p, std::int64_t n, std::int64_t cols, std::int64_t r) {
  const std::vector<T> qt = transposed(q, cols, r);
  project_rows(m, error, qt.data(), p, n, cols, r);
}

template <class T>
void project_back(const T* a, const T* p, T* q, std::int64_t n, std::int64_t cols, std::int64_t r) {
  std::vector<T> qt(static_cast<std::size_t>(cols * r));
  project_back_rows(a, p, qt.data(), n, cols, r);
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t k = 0; k < r; ++k) q[j * r + k] = qt[static_cast<std::size_t>(k * cols + j)];
}

template <class T>
void reconstruct(T* m, T* error, const T* p, const T* q, std::int64_t n, std::int64_t cols, std::int64_t r) {
  const std::vector<T> qt = transposed(q, cols, r);
  std::vector<T> row(static_cast<std::size_t>(cols));
  reconstruct_rows(m, error, p, qt.data(), row.data(), n, cols, r);
}

// Column i is normalised, then taken out of every later column (classical
// Gram-Schmidt, column by column); sums in double.
template <class T>
void orthogonalize(T* a, std::int64_t n, std::int64_t r) {
  for (std::int64_t i = 0; i < r; ++i) {
    double squares = 0;
    for (std::int64_t j = 0; j < n; ++j) squares += static_cast<double>(a[j * r + i]) * a[j * r + i];
    const double norm = std::sqrt(squares);
    if (norm > 0)
      for (std::int64_t j = 0; j < n; ++j) a[j * r + i] = static_cast<T>(a[j * r + i] / norm);
    for (std::int64_t c = i + 1; c < r; ++c) {
      double along = 0;
      for (std::int64_t j = 0; j < n; ++j) along += static_cast<double>(a[j * r + i]) * a[j * r + c];
      for (std::int64_t j = 0; j < n; ++j) a[j * r + c] = static_cast<T>(a[j * r + c] - along * a[j * r + i]);
    }
  }
}

#define DAGR_POWERSGD_INSTANTIATE(T)                                                                   \
  template void project<T>(T*, const T*, const T*, T*, std::int64_t, std::int64_t, std::int64_t);    \
  template void project_back<T>(const T*, const T*, T*, std::int64_t, std::int64_t, std::int64_t);    \
  template void reconstruct<T>(T*, T*, const T*, const T*, std::int64_t, std::int64_t, std::int64_t); \
  template void orthogonalize<T>(T*, std::int64_t, std::int64_t);
DAGR_POWERSGD_INSTANTIATE(float)
DAGR_POWERSGD_INSTANTIATE(double)

}  // namespace dagr::powersgd
