// The element types a collective moves, and the 16-bit float types C++ lacks.
//
// Public calls take std::span<T> of one of these types; the type travels with
// the buffer as a DType, so a collective never sees an untyped (void*, count).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace dagr {

enum class DType : std::uint8_t { float32, float64, float16, bfloat16, int32, int64, uint8 };

std::string_view name(DType t);
std::size_t element_size(DType t);
DType parse_dtype(std::string_view text);  // "float32", "bf16", … ; InputError otherwise

// IEEE 754 binary16, stored as its bits (layout-compatible with at::Half).
struct Half {
  std::uint16_t bits = 0;
  Half() = default;
  explicit Half(float f);
  explicit operator float() const;
};

// Half(in[i]) and float(in[i]) for i < n, bit for bit, 8 at a time with F16C
// where the CPU has it.
void to_float(const Half* in, float* out, std::size_t n);
void from_float(const float* in, Half* out, std::size_t n);

// bfloat16: the top half of a float32 (layout-compatible with at::BFloat16).
struct BFloat16 {
  std::uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f);
  explicit operator float() const;
};

// BFloat16(in[i]) and float(in[i]) for i < n, bit for bit, vectorised.
void to_float(const BFloat16* in, float* out, std::size_t n);
void from_float(const float* in, BFloat16* out, std::size_t n);

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::float32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::float64; };
template <> struct DTypeOf<Half> { static constexpr DType value = DType::float16; };
template <> struct DTypeOf<BFloat16> { static constexpr DType value = DType::bfloat16; };
template <> struct DTypeOf<std::int32_t> { static constexpr DType value = DType::int32; };
template <> struct DTypeOf<std::int64_t> { static constexpr DType value = DType::int64; };
template <> struct DTypeOf<std::uint8_t> { static constexpr DType value = DType::uint8; };

// An element type a collective accepts (const-qualified too, for inputs).
template <class T>
concept Element = requires { DTypeOf<std::remove_const_t<T>>::value; };

template <Element T>
constexpr DType dtype_of() {
  return DTypeOf<std::remove_const_t<T>>::value;
}

// Any element type from and to double (the 16-bit floats through float):
// for filling buffers and checking results.
template <Element T>
T element_from_double(double v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}
template <Element T>
double element_to_double(T v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) return static_cast<float>(v);
  else return static_cast<double>(v);
}

}  // namespace dagr
