#include "dagr/comm/dtype.h"

#include <immintrin.h>

#include <bit>
#include <cstring>

#include "dagr/comm/reduce_op.h"
#include "dagr/error.h"
#include "multiversioning.h"

namespace dagr {

std::string_view name(DType t) {
  switch (t) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    case DType::uint8: return "uint8";
  }
  return "?";
}

std::size_t element_size(DType t) {
  switch (t) {
    case DType::float64:
    case DType::int64: return 8;
    case DType::float32:
    case DType::int32: return 4;
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::uint8: return 1;
  }
  return 0;
}

DType parse_dtype(std::string_view text) {
  struct Alias { std::string_view name; DType type; };
  static constexpr Alias aliases[] = {
      {"float32", DType::float32}, {"float", DType::float32},   {"f32", DType::float32},
      {"float64", DType::float64}, {"double", DType::float64},  {"f64", DType::float64},
      {"float16", DType::float16}, {"half", DType::float16},    {"f16", DType::float16},
      {"bfloat16", DType::bfloat16}, {"bf16", DType::bfloat16}, {"int32", DType::int32},
      {"int", DType::int32},       {"int64", DType::int64},     {"uint8", DType::uint8}};
  for (const auto& a : aliases)
    if (a.name == text) return a.type;
  throw InputError(detail::concat("unknown dtype '", text,
                                  "' (float32, float64, float16, bfloat16, int32, int64, uint8)"));
}

std::string_view name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::min: return "min";
    case ReduceOp::max: return "max";
    case ReduceOp::prod: return "prod";
  }
  return "?";
}

ReduceOp parse_reduce_op(std::string_view text) {
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::min, ReduceOp::max, ReduceOp::prod})
    if (name(op) == text) return op;
  throw InputError(detail::concat("unknown reduce op '", text, "' (sum, avg, min, max, prod)"));
}

// float -> binary16, rounding to nearest even; overflow to infinity, NaN kept quiet.
Half::Half(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  std::uint16_t h;
  if (abs >= 0x7f800000u) {  // inf or NaN
    h = static_cast<std::uint16_t>(abs > 0x7f800000u ? 0x7e00u : 0x7c00u);
  } else if (abs >= 0x477ff000u) {  // rounds to a value >= 65520: overflow
    h = 0x7c00u;
  } else if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // Add 0.5 (as a float) so the FPU aligns and rounds the mantissa for us.
    const float shifted = std::bit_cast<float>(abs) + 0.5f;
    h = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(shifted) - 0x3f000000u);
  } else {
    const std::uint32_t odd = (abs >> 13) & 1u;
    h = static_cast<std::uint16_t>((abs + 0xc8000fffu + odd) >> 13);  // rebias and round
  }
  bits = static_cast<std::uint16_t>(h | sign);
}

Half::operator float() const {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1fu;
  const std::uint32_t man = bits & 0x3ffu;
  std::uint32_t x;
  if (exp == 0x1f) {
    x = 0x7f800000u | (man << 13);
  } else if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    x = std::bit_cast<std::uint32_t>(v);
  } else {
    x = ((exp + 112) << 23) | (man << 13);
  }
  return std::bit_cast<float>(x | sign);
}

namespace {
// float -> bfloat16 bits, rounding to nearest even; a NaN stays a (quiet) NaN.
// Branch-free, so the array loops below vectorise.
inline std::uint16_t bfloat16_bits(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<std::uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
}  // namespace

BFloat16::BFloat16(float f) : bits(bfloat16_bits(f)) {}

BFloat16::operator float() const {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// Whole arrays of bfloat16: the scalar conversions in loops that vectorise,
// built for AVX-512 and AVX2 as well (chosen once, at load time).
DAGR_TARGET_CLONES("arch=x86-64-v4", "avx2", "default") void to_float(const BFloat16* in, float* out,
                                                                                  std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(in[i].bits) << 16);
}

DAGR_TARGET_CLONES("arch=x86-64-v4", "avx2", "default") void from_float(const float* in, BFloat16* out,
                                                                                    std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i].bits = bfloat16_bits(in[i]);
}

// Whole arrays of binary16. F16C converts 8 values per instruction with the
// same IEEE rounding (to nearest even; overflow to infinity; subnormals exact)
// as the scalar code above; only NaNs differ (F16C keeps a NaN's payload, the
// scalar code makes every NaN the quiet 0x7e00, and sets a half's NaN payload
// into a float without quieting it). So a block of 8 that holds a NaN (halves:
// any value with the top exponent) goes through the scalar code instead: bit
// for bit the same results everywhere. GCC function multiversioning picks the F16C version at load time
// where the CPU has it (every x86-64 since 2013), the scalar one elsewhere.
namespace {

DAGR_TARGET_DEFAULT void half_to_float(const Half* in, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

DAGR_TARGET_DEFAULT void float_to_half(const float* in, Half* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = Half(in[i]);
}

#if DAGR_MULTIVERSIONING
__attribute__((target("avx2,f16c"))) void half_to_float(const Half* in, float* out, std::size_t n) {
  const __m128i exponent = _mm_set1_epi16(0x7c00);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m128i special = _mm_cmpeq_epi16(_mm_and_si128(h, exponent), exponent);  // infinity or NaN
    if (!_mm_testz_si128(special, special)) {
      for (std::size_t k = i; k < i + 8; ++k) out[k] = static_cast<float>(in[k]);
      continue;
    }
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

__attribute__((target("avx2,f16c"))) void float_to_half(const float* in, Half* out, std::size_t n) {
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
  const __m256i infinity = _mm256_set1_epi32(0x7f800000);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(in + i);
    const __m256i abs = _mm256_and_si256(_mm256_castps_si256(f), magnitude);
    const __m256i nan = _mm256_cmpgt_epi32(abs, infinity);  // both below 2^31: signed compare
    if (!_mm256_testz_si256(nan, nan)) {
      for (std::size_t k = i; k < i + 8; ++k) out[k] = Half(in[k]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = Half(in[i]);
}
#endif

}  // namespace

void to_float(const Half* in, float* out, std::size_t n) { half_to_float(in, out, n); }
void from_float(const float* in, Half* out, std::size_t n) { float_to_half(in, out, n); }

}  // namespace dagr
