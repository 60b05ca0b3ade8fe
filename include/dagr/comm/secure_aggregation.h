// Secure aggregation inside the allreduce: every rank learns the sum of the
// ranks' vectors and nothing else about another rank's vector.
//
//   dagr::SecureAggregator secure(comm);            // collective: exchanges keys
//   secure.allreduce(std::span<float>(grads), dagr::ReduceOp::avg);
//
// Each rank encodes its floats in fixed point (uint32), adds a mask, and the
// 32-bit integer sum runs through the communicator's allreduce (on shared
// memory fused into its reduce-scatter + allgather, so it moves no more bytes
// than a plain allreduce; over MPI an ordinary int32 sum); the masks cancel
// in the sum, exactly. Every pair of ranks shares a key (X25519, public keys
// exchanged through the communicator when the aggregator is made); the pair's
// mask stream is AES-128-CTR under that key (VAES where the CPU has it, else
// OpenSSL's libcrypto), its nonce the collective's sequence number, so no
// block is ever used twice. Rank i adds the streams it shares with higher
// ranks and subtracts those it shares with lower ones (mod 2^32), so the masks
// sum to zero. What crosses shared memory or the network is masked — uniform
// noise to anyone without the keys — or the decoded sum, which every rank
// learns anyway. Two checksum lanes (linear, so they sum as the data does) are
// summed after the data: masks that did not cancel (a rank with the wrong key)
// are an Error on every rank, never a silent wrong result; so is a NaN in any
// rank's input (an InputError). See docs/DECISIONS.md for the threat model
// and its limits.
//
// Fixed point: a value is clipped to [-clip, clip] and mapped to
// round(x · scale) + L/2, an integer in [0, L] with L >= 2 · clip · scale (even),
// so the sum of `size` ranks fits in 32 bits when size · L < 2^32 (checked when
// the aggregator is made). By default the scale is the largest power of two the
// group allows (then x · scale is exact in float arithmetic, and encoding runs
// 16 values to an AVX-512 instruction), with L = 2 · ceil(clip · scale); with
// level_bits, L = 2^level_bits - 2 and scale = L / (2 · clip). A result is
// exact to the encoding's quantum 1 / scale (per rank, rounded); decoding
// rounds once to float (twice for avg).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "dagr/comm/communicator.h"

namespace dagr {

struct SecureAggregationOptions {
  float clip = 8.0f;   // values are clipped to [-clip, clip]
  int level_bits = 0;  // L = 2^level_bits - 2 (2..32 bits); 0: the most the group size allows
};

// An X25519 key pair (libsodium's crypto_box / crypto_scalarmult format).
struct SecureKeyPair {
  std::array<std::uint8_t, 32> public_key{};
  std::array<std::uint8_t, 32> secret_key{};
  static SecureKeyPair generate();
};

class SecureAggregator {
 public:
  // Collective over `comm`: every rank publishes its public key (a fresh pair
  // unless `keys` is given). InputError when the encoding could overflow.
  explicit SecureAggregator(Communicator comm, SecureAggregationOptions options = {},
                            std::optional<SecureKeyPair> keys = std::nullopt);
  ~SecureAggregator();
  SecureAggregator(SecureAggregator&&) noexcept;
  SecureAggregator& operator=(SecureAggregator&&) noexcept;

  // In place, sum or avg (InputError for other ops). Collective. Error on every
  // rank when the checksums show that the masks did not cancel, InputError when
  // a rank's input holds NaN (then `data` holds garbage).
  void allreduce(std::span<float> data, ReduceOp op = ReduceOp::sum);
  // Out of place: the same, from `in` into `out` (InputError unless the sizes match).
  void allreduce(std::span<const float> in, std::span<float> out, ReduceOp op = ReduceOp::sum);

  // The fixed-point encoding this aggregator uses (the same on every rank).
  std::uint32_t encode(float x) const;
  // The float that `sum` (a sum of `count` encodings) stands for; its avg with ReduceOp::avg.
  // allreduce's result is decode(Σ encode(x_rank), size(), op), element for element.
  float decode(std::uint32_t sum, int count, ReduceOp op = ReduceOp::sum) const;
  double scale() const;  // encodings per unit: the quantum is 1 / scale()
  const Communicator& communicator() const;

 private:

  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace dagr
