// Secure aggregation (secure_aggregation.h).
//
// One allreduce of n floats, on rank i of W, as a transform the communicator
// runs (allreduce_transform.h: on shared memory fused into the pipeline's own
// copies, elsewhere encode-all, int32 sum, decode-all):
//   1. encode: q_k = round(clip(x_k) · scale) + L/2 in [0, L], adding to two
//      checksum lanes c1 = Σ q_k and c2 = Σ (k + 1) · q_k (mod 2^32);
//   2. mask: for every other rank j, word k of the AES-128-CTR keystream of
//      the pair's key with nonce = this aggregator's call number (so no block
//      is ever used twice) is added (j > i) or subtracted (j < i), mod 2^32;
//      the stream is made for the elements being encoded, in cache-sized
//      chunks, and added to the words as it is made;
//   3. the int32 sum of the words (it wraps, so it is the sum mod 2^32), which
//      on shared memory each rank computes for its piece, encoding its own
//      words on the fly rather than staging them;
//   4. decode: Σ_i x_ik = float(S_k - W · L/2) · 1 / (scale · W for avg), the
//      difference exact in int32 (decode() is the same function), summing
//      the checksums Σ S_k and Σ (k + 1) · S_k of the elements it decodes;
//   5. check: one small int32 sum over the ranks of the two lanes (masked as
//      words n and n + 1), the decoded checksums and a NaN count: the lanes
//      must equal the checksums — true when the masks cancelled, false with
//      probability 1 - 2^-64 otherwise (the lanes are as garbled as the data):
//      an Error on every rank, and the output must not be used.
#include "dagr/comm/secure_aggregation.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "aes_ctr.h"
#include "allreduce_transform.h"
#include "dagr/error.h"
#include "multiversioning.h"

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
}  // namespace

namespace {

constexpr std::size_t kChunkWords = 4096;  // 16 KiB at a time: stays in L1/L2

// The encoding, round(clip(x) · scale) + L/2, and what a sum of `count` of
// them stands for. Everything is a loop that vectorises on every clone: the
// rounding is the CPU's conversion in the default rounding mode (to nearest,
// ties to even), which this file, built without math errno, gets from irint
// as one vector instruction.
struct Encoding {
  float clip;
  double scale;
  std::uint32_t half;  // L/2: the encoding of 0
  bool binary;         // scale is a power of two: x · scale is exact in float

  // With a binary scale in float (16 lanes of AVX-512), otherwise in double
  // (8 lanes); either way |x · scale| < 2^31.
  template <bool Binary>
  std::uint32_t value(float x) const {
    const float c = std::min(std::max(x, -clip), clip);
    if constexpr (Binary) return static_cast<std::uint32_t>(__builtin_irintf(c * static_cast<float>(scale))) + half;
    return static_cast<std::uint32_t>(__builtin_irint(static_cast<double>(c) * scale)) + half;
  }
};

// What a call needs of its aggregator.
struct Context {
  Communicator comm;
  SecureAggregationOptions options;
  std::uint32_t levels = 0;  // L (even): an encoding is in [0, L], L/2 stands for 0
  double scale = 0;
  std::vector<std::optional<detail::AesCtr128>> streams;  // by peer rank: that pair's mask stream
  std::vector<std::uint32_t> own;                         // one chunk: a sum in the making

  explicit Context(Communicator c) : comm(std::move(c)) {}

  Encoding encoding() const {
    int exponent = 0;
    const bool binary = std::frexp(scale, &exponent) == 0.5 && exponent > -120 && exponent < 120;
    return {options.clip, scale, levels / 2, binary};
  }
};

}  // namespace

struct SecureAggregator::State : Context {
  std::uint64_t sequence = 0;  // nonce of the next call
  using Context::Context;
};

namespace {

// The loops over every element are built for AVX-512 and AVX2 as well, used
// where the CPU has them (GCC function multiversioning: chosen once, at load time).
#define DAGR_VECTOR_LOOP DAGR_TARGET_CLONES("arch=x86-64-v4", "avx2", "default")

// out = encodings of x[0, m) (element indices first…), adding to the checksum
// lanes c1 = Σ q and c2 = Σ (index + 1) · q; nan set when one is NaN.
DAGR_VECTOR_LOOP void encode_chunk(const float* x, std::size_t m, std::size_t first, Encoding e, std::uint32_t* out,
                                   std::uint32_t& c1, std::uint32_t& c2, bool& nan) {
  std::uint32_t s1 = 0, s2 = 0, bad = 0;
  const auto base = static_cast<std::uint32_t>(first) + 1;
  const auto count = static_cast<std::uint32_t>(m);  // 32-bit indices: one vector lane each
  auto loop = [&](auto binary) {  // one straight-line loop per kind of scale
    for (std::uint32_t i = 0; i < count; ++i) {
      const float v = x[i];
      bad |= v != v ? 1u : 0u;
      const std::uint32_t q = e.value<binary.value>(v);
      out[i] = q;
      s1 += q;
      s2 += (base + i) * q;
    }
  };
  if (e.binary)
    loop(std::true_type{});
  else
    loop(std::false_type{});
  c1 += s1;
  c2 += s2;
  nan = nan || bad != 0;
}

// out = float(S - offset) · factor for S = a + b (b optional), where offset =
// count · L/2 (the signed difference is exact in int32: |S - offset| <= count ·
// L/2 < 2^31) and factor = 1 / (scale · divisor); adds the summed data's
// checksums Σ S and Σ (index + 1) · S to s1 and s2. m is at most a chunk.
DAGR_VECTOR_LOOP void decode_chunk(const std::uint32_t* a, const std::uint32_t* b, std::size_t m, std::size_t first,
                                   std::uint32_t offset, float factor, float* out, std::uint32_t& s1,
                                   std::uint32_t& s2) {
  std::uint32_t x = 0, y = 0;
  const auto base = static_cast<std::uint32_t>(first) + 1;
  const auto count = static_cast<std::uint32_t>(m);  // 32-bit indices: one vector lane each
  auto loop = [&](auto two) {
    for (std::uint32_t i = 0; i < count; ++i) {
      std::uint32_t w = a[i];
      if constexpr (two.value) w += b[i];
      x += w;
      y += (base + i) * w;
      out[i] = static_cast<float>(static_cast<std::int32_t>(w - offset)) * factor;
    }
  };
  if (b)
    loop(std::true_type{});
  else
    loop(std::false_type{});
  s1 += x;
  s2 += y;
}

DAGR_VECTOR_LOOP void add_words(std::uint32_t* w, const std::uint32_t* z, std::size_t m) {
  for (std::size_t i = 0; i < m; ++i) w[i] += z[i];
}

// One secure allreduce, as the transform the communicator runs
// (allreduce_transform.h): the encoding is fixed point plus this rank's masks;
// the checksum lanes and the decoded sums' checksums accumulate here over the
// elements this rank handles, and are compared after the call (finish()).
class MaskedSum final : public detail::AllreduceTransform {
 public:
  MaskedSum(Context& s, std::uint64_t nonce, const float* in, float* out, ReduceOp op)
      : s_(s), nonce_(nonce), in_(in), out_(out), me_(s.comm.rank()), world_(s.comm.size()),
        encoding_(s.encoding()), offset_(static_cast<std::uint32_t>(world_) * encoding_.half),
        factor_(static_cast<float>(1.0 / (s.scale * (op == ReduceOp::avg ? world_ : 1)))) {}

  // Chunk by chunk into `own`, masked there, then copied out whole: a large
  // memcpy stores into memory another core last read faster than a vector
  // loop does (on the EPYC here, 1.4x faster for a whole secure allreduce).
  void encode(std::size_t first, std::size_t count, std::uint32_t* words) override {
    std::uint32_t* chunk = s_.own.data();
    for (std::size_t base = 0; base < count; base += kChunkWords) {
      const std::size_t m = std::min(kChunkWords, count - base);
      encode_masked(first + base, m, chunk);
      std::memcpy(words + base, chunk, m * sizeof(std::uint32_t));
    }
  }

  // Per chunk: the sum of all but one of the summands is gathered in `own`
  // (this rank's encoding, made there, and peers' words added to it), and the
  // last summand is added as the chunk is decoded.
  void reduce(std::size_t first, std::size_t count, const std::uint32_t* const* sources, int n, bool own,
              bool checked, float* copy) override {
    std::uint32_t s1 = 0, s2 = 0;
    std::uint32_t* acc = s_.own.data();
    for (std::size_t base = 0; base < count; base += kChunkWords) {
      const std::size_t m = std::min(kChunkWords, count - base);
      const std::uint32_t *a = sources[0] + base, *b = nullptr;
      if (own || n > 1) {
        int j = 0;
        if (own)
          encode_masked(first + base, m, acc);
        else
          std::copy_n(sources[j++] + base, m, acc);
        for (; j < n - 1; ++j) add_words(acc, sources[j] + base, m);
        a = acc;
        b = j < n ? sources[j] + base : nullptr;
      }
      // The copy for peers, into shared memory, is a memcpy (see encode()).
      decode_chunk(a, b, m, first + base, offset_, factor_, out_ + first + base, s1, s2);
      if (copy) std::memcpy(copy + base, out_ + first + base, m * sizeof(float));
    }
    if (checked) {
      sum1_ += s1;
      sum2_ += s2;
    }
  }

  // After the call, on every rank: one small int32 sum of the masked lanes,
  // the checksums of the decoded sums and the NaN count. The lanes (masked as
  // data words n and n + 1) sum to Σ S and Σ (k + 1) · S when the masks
  // cancelled.
  void finish(std::size_t n, std::uint64_t sequence) {
    std::array<std::uint32_t, 5> totals{lane1_, lane2_, sum1_, sum2_, nan_ ? 1u : 0u};
    mask(n, 2, totals.data());
    s_.comm.allreduce(std::span<std::int32_t>(reinterpret_cast<std::int32_t*>(totals.data()), totals.size()));
    DAGR_ENFORCE(totals[4] == 0, InputError, "secure allreduce #", sequence, ": the input of ", totals[4],
                 " rank(s) holds NaN; the result is garbage and must not be used");
    DAGR_ENFORCE(totals[0] == totals[2] && totals[1] == totals[3], Error, "secure allreduce #", sequence,
                 ": the masks did not cancel (checksum mismatch): a rank holds the wrong keys; "
                 "the result is garbage and must not be used");
  }

 private:
  // Elements [first, first + m), at most a chunk, encoded and masked into w.
  void encode_masked(std::size_t first, std::size_t m, std::uint32_t* w) {
    encode_chunk(in_ + first, m, first, encoding_, w, lane1_, lane2_, nan_);
    mask(first, m, w);
  }

  // Words [first, first + m) of every pair's stream, added (peer above this
  // rank) or subtracted (below), so the masks of all ranks sum to zero.
  void mask(std::size_t first, std::size_t m, std::uint32_t* w) {
    for (int j = 0; j < world_; ++j)
      if (j != me_) s_.streams[static_cast<std::size_t>(j)]->add_words(nonce_, first, m, w, j < me_);
  }

  Context& s_;
  std::uint64_t nonce_;
  const float* in_;
  float* out_;
  int me_, world_;
  Encoding encoding_;
  std::uint32_t offset_;  // W · L/2
  float factor_;          // 1 / (scale · divisor)
  std::uint32_t lane1_ = 0, lane2_ = 0, sum1_ = 0, sum2_ = 0;
  bool nan_ = false;
};

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
    // The finest power of two for a scale (so encoding is exact in float) whose
    // largest encoding, L = 2 · ceil(clip · scale), still fits: at most one bit
    // coarser than the finest scale of all.
    auto levels_at = [&](int e) { return 2 * static_cast<std::uint64_t>(std::ceil(options.clip * std::ldexp(1.0, e))); };
    int e = static_cast<int>(std::floor(std::log2(static_cast<double>(most) / (2.0 * options.clip))));
    while (levels_at(e) > most) --e;
    s.levels = static_cast<std::uint32_t>(levels_at(e));
    s.scale = std::ldexp(1.0, e);
  } else {
    const std::uint64_t wanted = (std::uint64_t{1} << options.level_bits) - 2;
    const int allowed = static_cast<int>(std::floor(std::log2(static_cast<double>(most) + 1)));
    DAGR_ENFORCE(wanted <= most, InputError, "secure aggregation: ", world, " ranks of 2^", options.level_bits,
                 " levels each could overflow the 32-bit sum; this group allows at most level_bits = ", allowed);
    s.levels = static_cast<std::uint32_t>(wanted);
    s.scale = s.levels / (2.0 * options.clip);
  }

  const SecureKeyPair own = keys ? *keys : SecureKeyPair::generate();
  DAGR_ENFORCE(sodium_init() >= 0, Error, "libsodium failed to initialise");
  std::vector<std::uint8_t> publics(32 * static_cast<std::size_t>(world));
  s.comm.allgather(std::span<const std::uint8_t>(own.public_key), std::span<std::uint8_t>(publics));
  s.streams.resize(static_cast<std::size_t>(world));
  for (int j = 0; j < world; ++j) {
    if (j == me) continue;
    const std::uint8_t* theirs = publics.data() + 32 * j;
    std::uint8_t shared[crypto_scalarmult_BYTES];
    DAGR_ENFORCE(crypto_scalarmult(shared, own.secret_key.data(), theirs) == 0, Error,
                 "secure aggregation: rank ", j, "'s public key is not a valid X25519 key");
    // The pair's key: a hash of the shared point and both public keys, lower rank's first.
    const std::uint8_t* lo = publics.data() + 32 * std::min(me, j);
    const std::uint8_t* hi = publics.data() + 32 * std::max(me, j);
    std::array<std::uint8_t, kPairKeyBytes> key;
    crypto_generichash_state h;
    crypto_generichash_init(&h, nullptr, 0, kPairKeyBytes);
    crypto_generichash_update(&h, shared, sizeof shared);
    crypto_generichash_update(&h, lo, 32);
    crypto_generichash_update(&h, hi, 32);
    crypto_generichash_final(&h, key.data(), kPairKeyBytes);
    s.streams[static_cast<std::size_t>(j)].emplace(key);
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(key.data(), key.size());
  }
  s.own.resize(kChunkWords);
}

SecureAggregator::~SecureAggregator() = default;
SecureAggregator::SecureAggregator(SecureAggregator&&) noexcept = default;
SecureAggregator& SecureAggregator::operator=(SecureAggregator&&) noexcept = default;

const Communicator& SecureAggregator::communicator() const { return state_->comm; }
double SecureAggregator::scale() const { return state_->scale; }


std::uint32_t SecureAggregator::encode(float x) const {
  std::uint32_t q, unused1 = 0, unused2 = 0;
  bool unused_nan = false;
  encode_chunk(&x, 1, 0, state_->encoding(), &q, unused1, unused2, unused_nan);
  return q;
}

float SecureAggregator::decode(std::uint32_t sum, int count, ReduceOp op) const {
  const State& s = *state_;
  float out;
  std::uint32_t unused1 = 0, unused2 = 0;
  decode_chunk(&sum, nullptr, 1, 0, static_cast<std::uint32_t>(count) * (s.levels / 2),
               static_cast<float>(1.0 / (s.scale * (op == ReduceOp::avg ? count : 1))), &out, unused1, unused2);
  return out;
}

void SecureAggregator::allreduce(std::span<float> data, ReduceOp op) { allreduce(data, data, op); }

void SecureAggregator::allreduce(std::span<const float> in, std::span<float> out, ReduceOp op) {
  State& s = *state_;
  DAGR_ENFORCE(op == ReduceOp::sum || op == ReduceOp::avg, InputError,
               "a secure allreduce sums or averages; it cannot ", name(op));
  DAGR_ENFORCE(in.size() == out.size(), InputError, "secure allreduce: the input holds ", in.size(),
               " elements but the output ", out.size());
  const std::uint64_t sequence = s.sequence++;  // never reused, even if this call fails
  MaskedSum sum(s, sequence, in.data(), out.data(), op);
  detail::allreduce_transformed(s.comm, sum, in.data(), out.data(), in.size());
  sum.finish(in.size(), sequence);
}

}  // namespace dagr
