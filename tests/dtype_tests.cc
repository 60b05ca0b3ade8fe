// The array conversions of float16 (dtype.h: to_float, from_float; F16C on
// this CPU where it has it) against the scalar Half conversions, bit for bit:
// every half, and floats of every sign, exponent and top mantissa bits with
// low bits on both sides of each rounding boundary (ties, NaN payloads,
// infinities, subnormal halves, overflow), at every offset and tail length.
// The bfloat16 arrays against rounding to nearest even written another way.
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <random>
#include <vector>

#include "dagr/comm/dtype.h"

namespace dagr {
namespace {

TEST(Float16Arrays, EveryHalfToFloatAsScalar) {
  std::vector<Half> in(1u << 16);
  for (std::uint32_t b = 0; b < in.size(); ++b) in[b].bits = static_cast<std::uint16_t>(b);
  std::vector<float> out(in.size());
  to_float(in.data(), out.data(), in.size());
  for (std::uint32_t b = 0; b < in.size(); ++b)
    ASSERT_EQ(std::bit_cast<std::uint32_t>(out[b]), std::bit_cast<std::uint32_t>(static_cast<float>(in[b])))
        << "half 0x" << std::hex << b;
}

TEST(Float16Arrays, FloatsToHalfAsScalar) {
  // The top 16 bits of a float fix sign, exponent and 7 mantissa bits; the low
  // 16 decide the rounding to half (13 bits dropped for normal halves, more for
  // subnormal ones) and a NaN's payload.
  const std::uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000,
                                0x7fff, 0x8000, 0x8001, 0xc000, 0xe000, 0xf000, 0xffff};
  std::vector<float> in;
  for (std::uint32_t high = 0; high < (1u << 16); ++high)
    for (std::uint32_t low : lows) in.push_back(std::bit_cast<float>(high << 16 | low));
  std::mt19937 gen(7);
  for (int k = 0; k < (1 << 18); ++k) in.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(gen())));
  std::vector<Half> out(in.size());
  from_float(in.data(), out.data(), in.size());
  for (std::size_t i = 0; i < in.size(); ++i)
    ASSERT_EQ(out[i].bits, Half(in[i]).bits) << "float 0x" << std::hex << std::bit_cast<std::uint32_t>(in[i]);
}

TEST(BFloat16Arrays, EveryValueToFloatAndFloatsToNearestEven) {
  std::vector<BFloat16> every(1u << 16);
  for (std::uint32_t b = 0; b < every.size(); ++b) every[b].bits = static_cast<std::uint16_t>(b);
  std::vector<float> widened(every.size());
  to_float(every.data(), widened.data(), every.size());
  for (std::uint32_t b = 0; b < every.size(); ++b) ASSERT_EQ(std::bit_cast<std::uint32_t>(widened[b]), b << 16);

  const std::uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
  std::vector<float> in;
  for (std::uint32_t high = 0; high < (1u << 16); ++high)
    for (std::uint32_t low : lows) in.push_back(std::bit_cast<float>(high << 16 | low));
  std::vector<BFloat16> out(in.size() + 7);
  for (std::size_t offset : {0, 3, 7}) {  // three alignments of the output
    from_float(in.data(), out.data() + offset, in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
      const std::uint32_t x = std::bit_cast<std::uint32_t>(in[i]);
      const std::uint16_t got = out[offset + i].bits, top = static_cast<std::uint16_t>(x >> 16);
      if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: still a NaN, quiet, same sign
        ASSERT_EQ(got & 0xffc0, (top | 0x40) & 0xffc0) << std::hex << x;
        continue;
      }
      const std::uint32_t rest = x & 0xffffu;
      const bool up = rest > 0x8000u || (rest == 0x8000u && (top & 1u));
      ASSERT_EQ(got, static_cast<std::uint16_t>(top + (up ? 1 : 0))) << std::hex << x;
      ASSERT_EQ(got, BFloat16(in[i]).bits);
    }
  }
}

// A NaN or infinity among finite values, at every place of a block of 8 and
// past it, in arrays of every length up to 40 from every offset.
TEST(Float16Arrays, SpecialValuesAtEveryOffsetAndLength) {
  const float specials[] = {std::bit_cast<float>(0x7fc00001u), std::bit_cast<float>(0xff800001u),
                            std::bit_cast<float>(0x7f800000u), std::bit_cast<float>(0x33800001u), 65520.0f};
  const std::uint16_t half_specials[] = {0x7c01, 0xfe01, 0x7c00, 0x0001, 0x83ff};
  for (int s = 0; s < 5; ++s)
    for (std::size_t where = 0; where < 40; ++where)
      for (std::size_t offset = 0; offset < 3; ++offset)
        for (std::size_t n = 0; n + offset <= 40; ++n) {
          std::vector<float> f(40);
          std::vector<Half> h(40);
          for (std::size_t i = 0; i < 40; ++i) {
            f[i] = 0.1f * static_cast<float>(i) - 1.7f;
            h[i] = Half(f[i]);
          }
          f[where] = specials[s];
          h[where].bits = half_specials[s];
          std::vector<Half> got_h(40);
          std::vector<float> got_f(40);
          from_float(f.data() + offset, got_h.data() + offset, n);
          to_float(h.data() + offset, got_f.data() + offset, n);
          for (std::size_t i = 0; i < 40; ++i) {
            const bool inside = i >= offset && i < offset + n;
            ASSERT_EQ(got_h[i].bits, inside ? Half(f[i]).bits : 0) << s << " " << where << " " << offset << " " << n;
            ASSERT_EQ(std::bit_cast<std::uint32_t>(got_f[i]),
                      inside ? std::bit_cast<std::uint32_t>(static_cast<float>(h[i])) : 0u)
                << s << " " << where << " " << offset << " " << n;
          }
        }
}

}  // namespace
}  // namespace dagr
