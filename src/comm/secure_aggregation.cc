// Secure aggregation (secure_aggregation.h).
//
// One allreduce of n floats, on rank i of W:
//   1. encode: q_k = round(clip(x_k) · scale) + L/2 in [0, L]; two checksum
//      lanes c1 = Σ q_k and c2 = Σ (k + 1) · q_k (mod 2^32) follow the data;
//   2. mask: for every other rank j, the AES-128-CTR keystream of the pair's
//      key from the counter block (sequence number, 0) — the sequence number of
//      this aggregator's collective, so no block is ever used twice — read as
//      uint32 words, is added (j > i) or subtracted (j < i), mod 2^32, over all
//      n + 2 words, in cache-sized chunks;
//   3. the communicator's int32 sum (which wraps, so it is the sum mod 2^32);
//   4. decode: Σ_i x_ik = (S_k - W · L/2) / scale (÷ W for avg), computed as
//      products with the inverses (decode() is the same function, element-wise);
//   5. check, in the same pass: the summed lanes must equal Σ S_k and
//      Σ (k + 1) · S_k of the summed data S — true when the masks cancelled,
//      false with probability 1 - 2^-64 otherwise (the lanes are as garbled as
//      the data): an Error, and the output must not be used.
#include "dagr/comm/secure_aggregation.h"

#include <openssl/evp.h>
#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dagr/error.h"

namespace dagr {

using detail::concat;

SecureKeyPair SecureKeyPair::generate() {
  DAGR_ENFORCE(sodium_init() >= 0, Error, "libsodium failed to initialise");
  SecureKeyPair k;
  crypto_box_keypair(k.public_key.data(), k.secret_key.data());
  return k;
}

namespace {

constexpr std::size_t kPairKeyBytes = 16;  // AES-128

// An OpenSSL cipher context, freed with its owner.
struct CipherContext {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx{EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free};
};

}  // namespace

struct SecureAggregator::State {
  Communicator comm;
  SecureAggregationOptions options;
  std::uint32_t levels = 0;  // L (even): an encoding is in [0, L], L/2 stands for 0
  double scale = 0;
  std::vector<std::array<std::uint8_t, kPairKeyBytes>> pair_keys;  // by peer rank
  std::vector<CipherContext> streams;                              // by peer rank: that pair's mask stream
  std::uint64_t sequence = 0;                                      // counter block of the next call
  std::vector<std::uint32_t> words;      // encodings, then the two checksum lanes
  std::vector<std::uint32_t> sums;       // their sum over the ranks
  std::vector<std::uint32_t> keystream;  // one chunk

  explicit State(Communicator c) : comm(std::move(c)) {}
};

namespace {

constexpr std::size_t kChunkWords = 4096;  // 16 KiB of keystream at a time: stays in L1/L2
// CTR mode XORs its keystream into an input: zeros give the keystream itself.
const std::array<std::uint32_t, kChunkWords> kZeros{};

// The loops over every element are built for AVX-512 and AVX2 as well, used
// where the CPU has them (GCC function multiversioning: chosen once, at load time).
#define DAGR_VECTOR_LOOP __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))

// x = (S - offset) / scale / divisor, as multiplications by the inverses.
DAGR_VECTOR_LOOP void decode_all(const std::uint32_t* w, std::size_t n, double inverse_scale, double offset,
                                 double inverse_divisor, float* out) {
  for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<float>((w[k] - offset) * inverse_scale * inverse_divisor);
}

// decode_all, in the same pass computing the checksums of the summed data S:
// true when they equal the summed lanes w[n], w[n + 1] (the masks cancelled).
DAGR_VECTOR_LOOP bool decode_checked(const std::uint32_t* w, std::size_t n, double inverse_scale, double offset,
                                     double inverse_divisor, float* out) {
  std::uint32_t sum1 = 0, sum2 = 0;
  for (std::size_t k = 0; k < n; ++k) {
    sum1 += w[k];
    sum2 += static_cast<std::uint32_t>(k + 1) * w[k];
    out[k] = static_cast<float>((w[k] - offset) * inverse_scale * inverse_divisor);
  }
  return sum1 == w[n] && sum2 == w[n + 1];
}

// round(clip(x) · scale) + L/2. The rounding adds and subtracts 1.5 · 2^52
// (to nearest, ties to even, in the default rounding mode) and the integer
// comes from a conversion to int32 (|round(·)| <= L/2 < 2^31): both
// vectorise, where a call to nearbyint or a 64-bit conversion would not.
inline std::uint32_t encode_value(float x, double clip, double scale, std::uint32_t half) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5 · 2^52
  const double y = std::min(std::max(static_cast<double>(x), -clip), clip) * scale;
  return static_cast<std::uint32_t>(static_cast<std::int32_t>((y + kMagic) - kMagic)) + half;
}

}  // namespace

SecureAggregator::SecureAggregator(Communicator comm, SecureAggregationOptions options,
                                   std::optional<SecureKeyPair> keys)
    : state_(std::make_unique<State>(std::move(comm))) {
  State& s = *state_;
  s.options = options;
  const int world = s.comm.size(), me = s.comm.rank();
  DAGR_ENFORCE(std::isfinite(options.clip) && options.clip > 0, InputError,
               "secure aggregation: clip must be a positive number, not ", options.clip);
  DAGR_ENFORCE(options.level_bits == 0 || (options.level_bits >= 2 && options.level_bits <= 32), InputError,
               "secure aggregation: level_bits must be 0 or in [2, 32], not ", options.level_bits);
  // W · L <= 2^32 - 1: the sum of every rank's largest encoding still fits.
  const std::uint64_t most = std::numeric_limits<std::uint32_t>::max() / static_cast<std::uint64_t>(world);
  if (options.level_bits == 0) {
    s.levels = static_cast<std::uint32_t>(most & ~std::uint64_t{1});
  } else {
    const std::uint64_t wanted = (std::uint64_t{1} << options.level_bits) - 2;
    const int allowed = static_cast<int>(std::floor(std::log2(static_cast<double>(most) + 1)));
    DAGR_ENFORCE(wanted <= most, InputError, "secure aggregation: ", world, " ranks of 2^", options.level_bits,
                 " levels each could overflow the 32-bit sum; this group allows at most level_bits = ", allowed);
    s.levels = static_cast<std::uint32_t>(wanted);
  }
  s.scale = s.levels / (2.0 * options.clip);

  const SecureKeyPair own = keys ? *keys : SecureKeyPair::generate();
  DAGR_ENFORCE(sodium_init() >= 0, Error, "libsodium failed to initialise");
  std::vector<std::uint8_t> publics(32 * static_cast<std::size_t>(world));
  s.comm.allgather(std::span<const std::uint8_t>(own.public_key), std::span<std::uint8_t>(publics));
  s.pair_keys.resize(static_cast<std::size_t>(world));
  for (int j = 0; j < world; ++j) {
    if (j == me) continue;
    const std::uint8_t* theirs = publics.data() + 32 * j;
    std::uint8_t shared[crypto_scalarmult_BYTES];
    DAGR_ENFORCE(crypto_scalarmult(shared, own.secret_key.data(), theirs) == 0, Error,
                 "secure aggregation: rank ", j, "'s public key is not a valid X25519 key");
    // The pair's key: a hash of the shared point and both public keys, lower rank's first.
    const std::uint8_t* lo = publics.data() + 32 * std::min(me, j);
    const std::uint8_t* hi = publics.data() + 32 * std::max(me, j);
    crypto_generichash_state h;
    crypto_generichash_init(&h, nullptr, 0, kPairKeyBytes);
    crypto_generichash_update(&h, shared, sizeof shared);
    crypto_generichash_update(&h, lo, 32);
    crypto_generichash_update(&h, hi, 32);
    crypto_generichash_final(&h, s.pair_keys[static_cast<std::size_t>(j)].data(), kPairKeyBytes);
    sodium_memzero(shared, sizeof shared);
  }
  s.streams.resize(static_cast<std::size_t>(world));
  for (const CipherContext& c : s.streams)
    DAGR_ENFORCE(c.ctx != nullptr, Error, "secure aggregation: OpenSSL could not allocate a cipher context");
}

SecureAggregator::~SecureAggregator() {
  if (state_) sodium_memzero(state_->pair_keys.data(), state_->pair_keys.size() * kPairKeyBytes);
}
SecureAggregator::SecureAggregator(SecureAggregator&&) noexcept = default;
SecureAggregator& SecureAggregator::operator=(SecureAggregator&&) noexcept = default;

const Communicator& SecureAggregator::communicator() const { return state_->comm; }
double SecureAggregator::scale() const { return state_->scale; }


std::uint32_t SecureAggregator::encode(float x) const {
  return encode_value(x, state_->options.clip, state_->scale, state_->levels / 2);
}

DAGR_VECTOR_LOOP void SecureAggregator::encode_into(const float* x, std::size_t m, std::uint32_t* out, std::size_t first_index,
                                   std::uint32_t& c1, std::uint32_t& c2, bool& nan) const {
  const double clip = state_->options.clip, scale = state_->scale;
  const std::uint32_t half = state_->levels / 2;
  std::uint32_t s1 = 0, s2 = 0, bad = 0;
  const std::uint32_t first = static_cast<std::uint32_t>(first_index) + 1;
  for (std::size_t i = 0; i < m; ++i) {
    const float v = x[i];
    bad |= v != v ? 1u : 0u;
    const std::uint32_t q = encode_value(v, clip, scale, half);
    out[i] = q;
    s1 += q;
    s2 += (first + static_cast<std::uint32_t>(i)) * q;
  }
  c1 += s1;
  c2 += s2;
  nan = nan || bad != 0;
}

float SecureAggregator::decode(std::uint32_t sum, int count, ReduceOp op) const {
  const State& s = *state_;
  float out;
  decode_all(&sum, 1, 1.0 / s.scale, count * static_cast<double>(s.levels / 2), op == ReduceOp::avg ? 1.0 / count : 1.0,
             &out);
  return out;
}

void SecureAggregator::allreduce(std::span<float> data, ReduceOp op) {
  State& s = *state_;
  DAGR_ENFORCE(op == ReduceOp::sum || op == ReduceOp::avg, InputError,
               "a secure allreduce sums or averages; it cannot ", name(op));
  const std::size_t n = data.size();
  const int world = s.comm.size(), me = s.comm.rank();
  const std::uint64_t sequence = s.sequence++;  // never reused, even if this call fails
  // Each pair's stream starts at the counter block (sequence, 0), big-endian:
  // AES-CTR counts up the low 64 bits, one per 16-byte block, never reaching
  // the next call's blocks (a call is far below 2^64 blocks).
  std::uint8_t counter[16] = {};
  for (int b = 0; b < 8; ++b) counter[b] = static_cast<std::uint8_t>(sequence >> (56 - 8 * b));
  for (int j = 0; j < world; ++j)
    if (j != me)
      DAGR_ENFORCE(EVP_EncryptInit_ex(s.streams[static_cast<std::size_t>(j)].ctx.get(), EVP_aes_128_ctr(), nullptr,
                                      s.pair_keys[static_cast<std::size_t>(j)].data(), counter) == 1,
                   Error, "secure aggregation: OpenSSL could not start AES-128-CTR");

  // 1 and 2, a chunk at a time (it stays in cache): encode, then each pair's
  // mask stream added or subtracted. The checksum lanes (words n and n + 1,
  // which may fall in different chunks) are final once the data before them is.
  s.words.resize(n + 2);
  s.keystream.resize(kChunkWords);
  std::uint32_t c1 = 0, c2 = 0;
  bool nan = false;
  for (std::size_t base = 0; base < n + 2; base += kChunkWords) {
    const std::size_t m = std::min(kChunkWords, n + 2 - base);
    std::uint32_t* w = s.words.data() + base;
    const std::size_t data_m = base >= n ? 0 : std::min(m, n - base);
    encode_into(data.data() + base, data_m, w, base, c1, c2, nan);
    for (std::size_t lane : {n, n + 1})
      if (lane >= base && lane < base + m) w[lane - base] = lane == n ? c1 : c2;
    for (int j = 0; j < world; ++j) {
      if (j == me) continue;
      int produced = 0;
      DAGR_ENFORCE(EVP_EncryptUpdate(s.streams[static_cast<std::size_t>(j)].ctx.get(),
                                     reinterpret_cast<unsigned char*>(s.keystream.data()), &produced,
                                     reinterpret_cast<const unsigned char*>(kZeros.data()), static_cast<int>(m * 4)) == 1 &&
                       produced == static_cast<int>(m * 4),
                   Error, "secure aggregation: AES-128-CTR failed");
      const std::uint32_t* z = s.keystream.data();
      if (j > me)
        for (std::size_t i = 0; i < m; ++i) w[i] += z[i];
      else
        for (std::size_t i = 0; i < m; ++i) w[i] -= z[i];
    }
  }
  DAGR_ENFORCE(!nan, InputError, "secure allreduce: the input holds NaN");

  // 3. the sum, mod 2^32 (the communicator's int32 sum wraps). Out of place:
  // OpenMPI's non-blocking allreduce takes a slower algorithm (reduce, then
  // broadcast) for an in-place call of 4 or more ranks: 2.2x the time on a 1 Gbit/s link.
  s.sums.resize(n + 2);
  s.comm.allreduce(std::span<const std::int32_t>(reinterpret_cast<const std::int32_t*>(s.words.data()), n + 2),
                   std::span<std::int32_t>(reinterpret_cast<std::int32_t*>(s.sums.data()), n + 2), ReduceOp::sum);

  // 4 and 5. decode, checking in the same pass (on a mismatch `data` holds
  // garbage, and the Error says so)
  DAGR_ENFORCE(decode_checked(s.sums.data(), n, 1.0 / s.scale, world * static_cast<double>(s.levels / 2),
                              op == ReduceOp::avg ? 1.0 / world : 1.0, data.data()),
               Error, "secure allreduce #", sequence,
               ": the masks did not cancel (checksum mismatch): a rank holds the wrong keys; "
               "the result is garbage and must not be used");
}

}  // namespace dagr
