#include "reduce_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "multiversioning.h"

namespace dagr::detail {
namespace {

// The type arithmetic happens in: float32 for the 16-bit floats, the type itself otherwise.
template <class T> struct AccumulatorOf { using type = T; };
template <> struct AccumulatorOf<Half> { using type = float; };
template <> struct AccumulatorOf<BFloat16> { using type = float; };

// Integer sums and products wrap around (two's complement) instead of being undefined.
template <class A>
A add(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
template <class A>
A mul(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
  } else {
    return a * b;
  }
}

template <ReduceOp Op, class A>
A combine(A a, A b) {
  if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) return add(a, b);
  if constexpr (Op == ReduceOp::prod) return mul(a, b);
  if constexpr (Op == ReduceOp::min) return b < a ? b : a;
  if constexpr (Op == ReduceOp::max) return a < b ? b : a;
}

// Works through the arrays in blocks that stay in L1: the block's accumulator
// starts as source 0, each further source is folded in, then the block is
// stored, and copied to the second target (staging that peers read) with one
// memcpy. The block is 4096 elements so that memcpy is large enough for glibc's
// `rep movsb` (above 8 KiB), which stores into lines another core holds much
// faster than a vector loop on the EPYC measured (docs/PERFORMANCE.md).
// Compiled for AVX-512, AVX2 and plain x86-64; the loader picks the widest the
// CPU has (GCC's target_clones). Each element's operations and their order are
// the same in every clone, so the bits are too.
template <class T, ReduceOp Op>
DAGR_TARGET_CLONES("avx512f", "avx2", "default") void reduce_typed(ReduceTarget target, const void* const* sources, int n_sources,
                  std::size_t count) {
  using A = typename AccumulatorOf<T>::type;
  constexpr std::size_t kBlock = 4096;
  A acc[kBlock];
  T* dst = static_cast<T*>(target.dst);
  T* dst2 = static_cast<T*>(target.dst2);
  // 16-bit float blocks convert as whole arrays (dtype.h: F16C for float16,
  // vector loops for bfloat16).
  constexpr bool k16Bit = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;
  [[maybe_unused]] std::conditional_t<k16Bit, float[kBlock], char> converted;
  for (std::size_t base = 0; base < count; base += kBlock) {
    const std::size_t m = std::min(kBlock, count - base);
    const T* s0 = static_cast<const T*>(sources[0]) + base;
    if constexpr (k16Bit) to_float(s0, acc, m);
    else for (std::size_t i = 0; i < m; ++i) acc[i] = static_cast<A>(s0[i]);
    for (int j = 1; j < n_sources; ++j) {
      const T* s = static_cast<const T*>(sources[j]) + base;
      if constexpr (k16Bit) {
        to_float(s, converted, m);
        for (std::size_t i = 0; i < m; ++i) acc[i] = combine<Op>(acc[i], converted[i]);
      } else {
        for (std::size_t i = 0; i < m; ++i) acc[i] = combine<Op>(acc[i], static_cast<A>(s[i]));
      }
    }
    if constexpr (Op == ReduceOp::avg) {
      const A n = static_cast<A>(n_sources);
      for (std::size_t i = 0; i < m; ++i) acc[i] = acc[i] / n;
    }
    if constexpr (k16Bit) from_float(acc, dst + base, m);
    else for (std::size_t i = 0; i < m; ++i) dst[base + i] = static_cast<T>(acc[i]);
    if (dst2) std::memcpy(dst2 + base, dst + base, m * sizeof(T));
  }
}

template <class T>
void reduce_op(ReduceTarget target, const void* const* sources, int n, std::size_t count,
               ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return reduce_typed<T, ReduceOp::sum>(target, sources, n, count);
    case ReduceOp::avg: return reduce_typed<T, ReduceOp::avg>(target, sources, n, count);
    case ReduceOp::min: return reduce_typed<T, ReduceOp::min>(target, sources, n, count);
    case ReduceOp::max: return reduce_typed<T, ReduceOp::max>(target, sources, n, count);
    case ReduceOp::prod: return reduce_typed<T, ReduceOp::prod>(target, sources, n, count);
  }
}

template <class T>
void divide_typed(void* data, std::size_t count, int divisor) {
  using A = typename AccumulatorOf<T>::type;
  T* p = static_cast<T*>(data);
  for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<T>(static_cast<A>(p[i]) / static_cast<A>(divisor));
}

}  // namespace

void divide(void* data, std::size_t count, DType dtype, int divisor) {
  switch (dtype) {
    case DType::float32: return divide_typed<float>(data, count, divisor);
    case DType::float64: return divide_typed<double>(data, count, divisor);
    case DType::float16: return divide_typed<Half>(data, count, divisor);
    case DType::bfloat16: return divide_typed<BFloat16>(data, count, divisor);
    case DType::int32: return divide_typed<std::int32_t>(data, count, divisor);
    case DType::int64: return divide_typed<std::int64_t>(data, count, divisor);
    case DType::uint8: return divide_typed<std::uint8_t>(data, count, divisor);
  }
}

void reduce_sources(ReduceTarget target, const void* const* sources, int n_sources,
                    std::size_t count, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::float32: return reduce_op<float>(target, sources, n_sources, count, op);
    case DType::float64: return reduce_op<double>(target, sources, n_sources, count, op);
    case DType::float16: return reduce_op<Half>(target, sources, n_sources, count, op);
    case DType::bfloat16: return reduce_op<BFloat16>(target, sources, n_sources, count, op);
    case DType::int32: return reduce_op<std::int32_t>(target, sources, n_sources, count, op);
    case DType::int64: return reduce_op<std::int64_t>(target, sources, n_sources, count, op);
    case DType::uint8: return reduce_op<std::uint8_t>(target, sources, n_sources, count, op);
  }
}

}  // namespace dagr::detail
