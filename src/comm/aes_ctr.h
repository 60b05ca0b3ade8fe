// AES-128 in counter mode, used as a keystream generator (secure aggregation's
// mask streams).
//
// Block b of the stream with nonce s is AES_k(s ‖ b), both halves big-endian:
// exactly what OpenSSL's EVP_aes_128_ctr produces from the IV (s ‖ 0), so the
// two are interchangeable (a test checks it). Any range of blocks can be made
// on its own, in any order: a rank makes the masks of the elements it handles
// when it handles them.
//
// Where the CPU has VAES with AVX-512 (AMD Zen 4 and later, Intel Ice Lake and
// later) the blocks are made 16 at a time in 512-bit registers, about four
// times the rate of AES-NI's 128-bit instructions; elsewhere, or with the
// environment variable DAGR_AES=openssl, OpenSSL makes them (AES-NI where
// present).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace dagr::detail {

class AesCtr128 {
 public:
  static constexpr std::size_t kBlockBytes = 16;

  explicit AesCtr128(const std::array<std::uint8_t, 16>& key);
  ~AesCtr128();
  AesCtr128(AesCtr128&&) noexcept;
  AesCtr128& operator=(AesCtr128&&) noexcept;

  // Blocks [first, first + blocks) of the stream with this nonce, into `out`
  // (16 · blocks bytes). The block number must not pass 2^64 - 1.
  void blocks(std::uint64_t nonce, std::uint64_t first, std::size_t blocks, std::uint8_t* out) const;

  // The 32-bit little-endian words [first, first + count) of that stream.
  void words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out) const;

  // out[i] += word first + i of that stream (or -=, with `subtract`), mod 2^32,
  // for i in [0, count): the keystream never goes through memory on VAES.
  void add_words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out,
                 bool subtract) const;

  // Whether blocks() runs on VAES (else OpenSSL).
  static bool vectorised();

 private:
  void openssl_blocks(std::uint64_t nonce, std::uint64_t first, std::size_t blocks, std::uint8_t* out) const;
  template <int Apply>
  void apply_words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out) const;

  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace dagr::detail
