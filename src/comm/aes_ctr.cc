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
#include <cstdlib>
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

// What a call does with the keystream: store it, or add it to (subtract it
// from) the 32-bit words already there.
enum class Apply { store, add, subtract };

template <Apply A>
DAGR_VAES_TARGET inline void apply(__m512i keystream, std::uint8_t* out, __mmask16 words = 0xffff) {
  if constexpr (A == Apply::store) {
    _mm512_mask_storeu_epi32(out, words, keystream);
  } else {
    const __m512i w = _mm512_maskz_loadu_epi32(words, out);
    _mm512_mask_storeu_epi32(out, words,
                             A == Apply::add ? _mm512_add_epi32(w, keystream) : _mm512_sub_epi32(w, keystream));
  }
}

template <Apply A>
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
    for (int i = 0; i < kWide; ++i) apply<A>(_mm512_aesenclast_epi128(x[i], k[kRounds]), out + 64 * i);
  }
  for (; blocks > 0; out += 64) {
    const __m512i x = encrypt(_mm512_shuffle_epi8(counter, to_big_endian), k);
    counter = _mm512_add_epi64(counter, four);
    const std::size_t here = std::min<std::size_t>(blocks, 4);
    apply<A>(x, out, static_cast<__mmask16>((1u << (4 * here)) - 1));
    blocks -= here;
  }
}

// DAGR_AES=openssl takes OpenSSL's path on any CPU (its tests run both).
bool cpu_has_vaes() {
  if (const char* choice = std::getenv("DAGR_AES"); choice && std::strcmp(choice, "openssl") == 0) return false;
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

// OpenSSL: counter mode XORs the keystream into its input, so zeros give the keystream.
void AesCtr128::openssl_blocks(std::uint64_t nonce, std::uint64_t first, std::size_t blocks, std::uint8_t* out) const {
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

void AesCtr128::blocks(std::uint64_t nonce, std::uint64_t first, std::size_t blocks, std::uint8_t* out) const {
  if (blocks == 0) return;
  if (vectorised()) return vaes_blocks<Apply::store>(state_->round_keys, nonce, first, blocks, out);
  openssl_blocks(nonce, first, blocks, out);
}

// Words [first, first + count) of the stream, stored into, added to or
// subtracted from out[0, count). VAES combines each register of keystream with
// the words as it makes it; OpenSSL's keystream goes through a buffer on the
// stack, a few KiB at a time. The same calls serve a range cut anywhere.
template <int A>
void AesCtr128::apply_words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out) const {
  constexpr auto op = static_cast<Apply>(A);
  constexpr std::size_t kPerBlock = kBlockBytes / 4;
  if (count == 0) return;
  if (vectorised()) {
    // Words [skip, skip + m) of block `block` into w[0, m): a block cut by
    // `first` or by the end goes through a copy of its words.
    auto cut_block = [&](std::uint64_t block, std::size_t skip, std::size_t m, std::uint32_t* w) {
      std::uint32_t partial[kPerBlock] = {};
      std::copy_n(w, m, partial + skip);
      vaes_blocks<op>(state_->round_keys, nonce, block, 1, reinterpret_cast<std::uint8_t*>(partial));
      std::copy_n(partial + skip, m, w);
    };
    std::uint64_t block = first / kPerBlock;
    if (const std::size_t skip = first % kPerBlock; skip != 0) {
      const std::size_t m = std::min<std::size_t>(count, kPerBlock - skip);
      cut_block(block++, skip, m, out);
      out += m;
      count -= m;
    }
    const std::size_t whole = count / kPerBlock, rest = count % kPerBlock;
    vaes_blocks<op>(state_->round_keys, nonce, block, whole, reinterpret_cast<std::uint8_t*>(out));
    if (rest != 0) cut_block(block + whole, 0, rest, out + whole * kPerBlock);
    return;
  }
  constexpr std::size_t kBufferBlocks = 256;
  alignas(64) std::uint32_t buffer[kBufferBlocks * kPerBlock];
  for (std::uint64_t at = first; count > 0;) {
    const std::uint64_t block = at / kPerBlock;
    const std::size_t skip = at % kPerBlock;
    const std::size_t m = std::min<std::size_t>(count, kBufferBlocks * kPerBlock - skip);
    openssl_blocks(nonce, block, (skip + m + kPerBlock - 1) / kPerBlock, reinterpret_cast<std::uint8_t*>(buffer));
    const std::uint32_t* z = buffer + skip;
    for (std::size_t i = 0; i < m; ++i)
      out[i] = op == Apply::store ? z[i] : op == Apply::add ? out[i] + z[i] : out[i] - z[i];
    at += m;
    out += m;
    count -= m;
  }
}

void AesCtr128::words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out) const {
  apply_words<static_cast<int>(Apply::store)>(nonce, first, count, out);
}

void AesCtr128::add_words(std::uint64_t nonce, std::uint64_t first, std::size_t count, std::uint32_t* out,
                          bool subtract) const {
  if (subtract)
    apply_words<static_cast<int>(Apply::subtract)>(nonce, first, count, out);
  else
    apply_words<static_cast<int>(Apply::add)>(nonce, first, count, out);
}

}  // namespace dagr::detail
