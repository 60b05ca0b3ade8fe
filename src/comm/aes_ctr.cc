// AES-128-CTR keystream (aes_ctr.h).
//
// The VAES path: the eleven round keys are expanded once with AES-NI's key
// generation assist and broadcast to all four 128-bit lanes of a 512-bit
// register; each lane of a counter register holds one block's (nonce, number)
// as native 64-bit integers, byte-swapped to big-endian just before the first
// round. Eight registers — 32 blocks — are in flight per loop, enough to cover
// the latency of the round instruction.
#include "aes_ctr.h"

#include <immintrin.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "dagr/error.h"

namespace dagr::detail {
namespace {

constexpr int kRounds = 10;

#define DAGR_AES_TARGET __attribute__((target("aes,sse4.1")))
#define DAGR_VAES_TARGET __attribute__((target("aes,vaes,avx512f,avx512bw")))

DAGR_AES_TARGET inline __m128i expand_step(__m128i key, __m128i assist) {
  assist = _mm_shuffle_epi32(assist, 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

// The AES-128 key schedule (FIPS-197 §5.2), eleven round keys.
DAGR_AES_TARGET void expand_key(const std::uint8_t* key, std::uint8_t* round_keys) {
  __m128i k[kRounds + 1];
  k[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
#define DAGR_AES_EXPAND(i, rcon) k[i] = expand_step(k[i - 1], _mm_aeskeygenassist_si128(k[i - 1], rcon))
  DAGR_AES_EXPAND(1, 0x01);
  DAGR_AES_EXPAND(2, 0x02);
  DAGR_AES_EXPAND(3, 0x04);
  DAGR_AES_EXPAND(4, 0x08);
  DAGR_AES_EXPAND(5, 0x10);
  DAGR_AES_EXPAND(6, 0x20);
  DAGR_AES_EXPAND(7, 0x40);
  DAGR_AES_EXPAND(8, 0x80);
  DAGR_AES_EXPAND(9, 0x1b);
  DAGR_AES_EXPAND(10, 0x36);
#undef DAGR_AES_EXPAND
  for (int r = 0; r <= kRounds; ++r) _mm_storeu_si128(reinterpret_cast<__m128i*>(round_keys + 16 * r), k[r]);
}

DAGR_VAES_TARGET inline __m512i encrypt(__m512i block, const __m512i* k) {
  block = _mm512_xor_si512(block, k[0]);
  for (int r = 1; r < kRounds; ++r) block = _mm512_aesenc_epi128(block, k[r]);
  return _mm512_aesenclast_epi128(block, k[kRounds]);
}

DAGR_VAES_TARGET void vaes_blocks(const std::uint8_t* round_keys, std::uint64_t nonce, std::uint64_t first,
                                  std::size_t blocks, std::uint8_t* out) {
  __m512i k[kRounds + 1];
  for (int r = 0; r <= kRounds; ++r)
    k[r] = _mm512_maskz_broadcast_i32x4(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(round_keys + 16 * r)));
  // Within each 128-bit lane, reverse the bytes of both 64-bit halves.
  const __m512i to_big_endian = _mm512_set_epi64(0x08090a0b0c0d0e0f, 0x0001020304050607, 0x08090a0b0c0d0e0f,
                                                 0x0001020304050607, 0x08090a0b0c0d0e0f, 0x0001020304050607,
                                                 0x08090a0b0c0d0e0f, 0x0001020304050607);
  const __m512i four = _mm512_set_epi64(4, 0, 4, 0, 4, 0, 4, 0);
  const auto n = static_cast<long long>(nonce);
  const auto f = static_cast<long long>(first);
  __m512i counter = _mm512_set_epi64(f + 3, n, f + 2, n, f + 1, n, f, n);  // lane i: (nonce, first + i)

  constexpr int kWide = 8;  // registers in flight
  for (; blocks >= 4 * kWide; blocks -= 4 * kWide, out += 64 * kWide) {
    __m512i x[kWide];
    for (int i = 0; i < kWide; ++i) {
      x[i] = _mm512_shuffle_epi8(counter, to_big_endian);
      counter = _mm512_add_epi64(counter, four);
    }
    for (int i = 0; i < kWide; ++i) x[i] = _mm512_xor_si512(x[i], k[0]);
    for (int r = 1; r < kRounds; ++r)
      for (int i = 0; i < kWide; ++i) x[i] = _mm512_aesenc_epi128(x[i], k[r]);
    for (int i = 0; i < kWide; ++i) _mm512_storeu_si512(out + 64 * i, _mm512_aesenclast_epi128(x[i], k[kRounds]));
  }
  for (; blocks > 0; out += 64) {
    const __m512i x = encrypt(_mm512_shuffle_epi8(counter, to_big_endian), k);
    counter = _mm512_add_epi64(counter, four);
    if (blocks >= 4) {
      _mm512_storeu_si512(out, x);
      blocks -= 4;
    } else {
      alignas(64) std::uint8_t last[64];
      _mm512_store_si512(last, x);
      std::memcpy(out, last, 16 * blocks);
      blocks = 0;
    }
  }
}

bool cpu_has_vaes() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("aes") && __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw");
}

}  // namespace

struct AesCtr128::State {
  std::array<std::uint8_t, 16> key;
  alignas(16) std::uint8_t round_keys[16 * (kRounds + 1)];
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx{nullptr, &EVP_CIPHER_CTX_free};
  ~State() {
    OPENSSL_cleanse(key.data(), key.size());
    OPENSSL_cleanse(round_keys, sizeof round_keys);
  }
};

bool AesCtr128::vectorised() {
  static const bool has = cpu_has_vaes();
  return has;
}

AesCtr128::AesCtr128(const std::array<std::uint8_t, 16>& key) : state_(std::make_unique<State>()) {
  state_->key = key;
  if (vectorised()) {
    expand_key(key.data(), state_->round_keys);
  } else {
    state_->ctx.reset(EVP_CIPHER_CTX_new());
    DAGR_ENFORCE(state_->ctx != nullptr, Error, "AES-128-CTR: OpenSSL could not allocate a cipher context");
  }
}

AesCtr128::~AesCtr128() = default;
AesCtr128::AesCtr128(AesCtr128&&) noexcept = default;
AesCtr128& AesCtr128::operator=(AesCtr128&&) noexcept = default;

void AesCtr128::blocks(std::uint64_t nonce, std::uint64_t first, std::size_t blocks, std::uint8_t* out) const {
  if (blocks == 0) return;
  if (vectorised()) return vaes_blocks(state_->round_keys, nonce, first, blocks, out);
  // OpenSSL: counter mode XORs the keystream into its input, so zeros give the keystream.
  std::uint8_t iv[16];
  for (int b = 0; b < 8; ++b) {
    iv[b] = static_cast<std::uint8_t>(nonce >> (56 - 8 * b));
    iv[8 + b] = static_cast<std::uint8_t>(first >> (56 - 8 * b));
  }
  EVP_CIPHER_CTX* ctx = state_->ctx.get();
  DAGR_ENFORCE(EVP_EncryptInit_ex(ctx, EVP_aes_128_ctr(), nullptr, state_->key.data(), iv) == 1, Error,
               "AES-128-CTR: OpenSSL could not start the cipher");
  static const std::uint8_t zeros[4096] = {};
  for (std::size_t done = 0; done < blocks * kBlockBytes;) {
    const int m = static_cast<int>(std::min(sizeof zeros, blocks * kBlockBytes - done));
    int produced = 0;
    DAGR_ENFORCE(EVP_EncryptUpdate(ctx, out + done, &produced, zeros, m) == 1 && produced == m, Error,
                 "AES-128-CTR: OpenSSL failed");
    done += static_cast<std::size_t>(m);
  }
}

void AesCtr128::words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out) const {
  constexpr std::uint64_t kPerBlock = kBlockBytes / 4;
  std::uint32_t partial[kPerBlock];
  std::uint64_t block = first / kPerBlock;
  // A block cut by `first`: its tail.
  if (const std::size_t skip = first % kPerBlock; skip != 0 && count > 0) {
    blocks(nonce, block++, 1, reinterpret_cast<std::uint8_t*>(partial));
    const std::size_t m = std::min<std::size_t>(count, kPerBlock - skip);
    std::memcpy(out, partial + skip, 4 * m);
    out += m;
    count -= m;
  }
  // Whole blocks straight into `out`, then the head of a block cut by the end.
  const std::size_t whole = count / kPerBlock;
  blocks(nonce, block, whole, reinterpret_cast<std::uint8_t*>(out));
  if (const std::size_t rest = count % kPerBlock; rest != 0) {
    blocks(nonce, block + whole, 1, reinterpret_cast<std::uint8_t*>(partial));
    std::memcpy(out + whole * kPerBlock, partial, 4 * rest);
  }
}

}  // namespace dagr::detail
