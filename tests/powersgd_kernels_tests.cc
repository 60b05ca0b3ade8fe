// PowerSGD's loops (src/train/powersgd_kernels.h) against plain products
// computed in long double, on shapes that leave remainders after the loops'
// 16 lanes, at ranks 1 to 4, with and without error feedback, in float32 and
// float64; Gram-Schmidt leaves orthonormal columns and a zero column zero.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "train/powersgd_kernels.h"

namespace dagr::powersgd {
namespace {

template <class T>
std::vector<T> random_values(std::size_t count, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<T> v(count);
  for (T& x : v) x = static_cast<T>(normal(gen));
  return v;
}

// c (rows × inner) times d (inner × cols), every matrix row-major, d read as
// its transpose when `transpose_d`; in long double.
std::vector<long double> product(const auto& c, const auto& d, std::int64_t rows, std::int64_t inner,
                                 std::int64_t cols, bool transpose_d) {
  std::vector<long double> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t k = 0; k < inner; ++k)
        out[i * cols + j] += static_cast<long double>(c[i * inner + k]) * (transpose_d ? d[j * inner + k] : d[k * cols + j]);
  return out;
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<long double>& want, const char* what) {
  const double tolerance = std::is_same_v<T, float> ? 1e-4 : 1e-12;
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(static_cast<double>(got[i]), static_cast<double>(want[i]), tolerance * (1 + std::fabs(static_cast<double>(want[i]))))
        << what << " element " << i;
}

template <class T>
void one_step(std::int64_t n, std::int64_t cols, std::int64_t r, bool feedback) {
  SCOPED_TRACE(testing::Message() << n << " x " << cols << " rank " << r << (feedback ? " with" : " without")
                                  << " error feedback, " << sizeof(T) * 8 << "-bit");
  const std::size_t size = static_cast<std::size_t>(n * cols);
  std::vector<T> m = random_values<T>(size, 1), error = random_values<T>(size, 2);
  const std::vector<T> q0 = random_values<T>(static_cast<std::size_t>(cols * r), 3);
  std::vector<long double> a(size);  // what is approximated
  for (std::size_t i = 0; i < size; ++i) a[i] = static_cast<long double>(m[i]) + (feedback ? error[i] : 0);

  std::vector<T> p(static_cast<std::size_t>(n * r)), q = q0;
  const std::vector<T> error_before = error;
  project(m.data(), feedback ? error.data() : nullptr, q.data(), p.data(), n, cols, r);
  EXPECT_EQ(error, error_before) << "project() must leave E alone (a failed step keeps it)";
  expect_close(m, a, "A over M");
  expect_close(p, product(a, q0, n, cols, r, false), "P = A Q");

  // Q = Aᵀ P: (cols × n) times (n × r), with Aᵀ read from A as the transpose of its rows.
  std::vector<long double> at(static_cast<std::size_t>(cols * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < cols; ++j) at[j * n + i] = a[i * cols + j];
  project_back(m.data(), p.data(), q.data(), n, cols, r);
  expect_close(q, product(at, p, cols, n, r, false), "Q = A^T P");

  const std::vector<long double> approximation = product(p, q, n, r, cols, true);  // P Qᵀ
  reconstruct(m.data(), feedback ? error.data() : nullptr, p.data(), q.data(), n, cols, r);
  expect_close(m, approximation, "M = P Q^T");
  if (feedback) {
    std::vector<long double> left_out(size);
    for (std::size_t i = 0; i < size; ++i) left_out[i] = a[i] - approximation[i];
    expect_close(error, left_out, "E = A - P Q^T");
  }
}

TEST(PowerSgdKernels, MatchPlainProducts) {
  for (std::int64_t r = 1; r <= 4; ++r)
    for (bool feedback : {false, true}) {
      one_step<float>(7, 37, r, feedback);
      one_step<float>(33, 16, r, feedback);
      one_step<double>(5, 50, r, feedback);
    }
  one_step<float>(1, 1, 1, true);
}

TEST(PowerSgdKernels, OrthogonalizeLeavesOrthonormalColumnsAndZerosZero) {
  constexpr std::int64_t n = 40, r = 4;
  std::vector<double> a = random_values<double>(n * r, 4);
  for (std::int64_t j = 0; j < n; ++j) a[j * r + 2] = 0;  // column 2 all zeros
  orthogonalize(a.data(), n, r);
  for (std::int64_t c = 0; c < r; ++c)
    for (std::int64_t d = c; d < r; ++d) {
      double dot = 0;
      for (std::int64_t j = 0; j < n; ++j) dot += a[j * r + c] * a[j * r + d];
      const double want = (c == d && c != 2) ? 1 : 0;
      EXPECT_NEAR(dot, want, 1e-12) << "columns " << c << " and " << d;
    }
  for (std::int64_t j = 0; j < n; ++j) EXPECT_EQ(a[j * r + 2], 0) << "row " << j;
}

}  // namespace
}  // namespace dagr::powersgd
