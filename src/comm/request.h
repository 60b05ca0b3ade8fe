// One call into the communicator, as the backends see it.
//
// The public API is typed (std::span<T>); it is turned into a Request once, at
// the boundary, and the DType travels with the pointers from there on.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "dagr/comm/dtype.h"
#include "dagr/comm/op_kind.h"
#include "dagr/comm/reduce_op.h"

namespace dagr::detail {

struct AllreduceTransform;

using Clock = std::chrono::steady_clock;

struct Request {
  OpKind kind = OpKind::barrier;
  ReduceOp op = ReduceOp::sum;
  DType dtype = DType::float32;
  // Elements: allreduce/reduce/broadcast/send/recv: the whole buffer;
  // allgather: each rank's contribution; reduce_scatter: each rank's result.
  std::size_t count = 0;
  int root = 0;   // reduce, broadcast: the root; send/recv: the peer
  int tag = 0;    // send/recv
  const void* in = nullptr;
  void* out = nullptr;
  Clock::time_point deadline;
  std::chrono::milliseconds timeout{0};  // for messages: what the deadline came from
  // allreduce(sum, int32) only: the words are this transform's encoding of `in`
  // (floats), decoded into `out` (allreduce_transform.h).
  AllreduceTransform* transform = nullptr;

  std::size_t bytes() const { return count * element_size(dtype); }
};

// What every rank of a collective must agree on. Compared at the start of every
// collective; a difference is a MismatchError on every rank.
struct Fingerprint {
  std::uint64_t count = 0;
  std::int32_t root = 0;
  OpKind kind = OpKind::barrier;
  ReduceOp op = ReduceOp::sum;
  DType dtype = DType::float32;
  std::uint8_t unused = 0;

  static Fingerprint of(const Request& r);
  bool operator==(const Fingerprint&) const = default;
  std::string describe() const;  // "allreduce(sum, float32, count=100)"
};
static_assert(sizeof(Fingerprint) == 16);

}  // namespace dagr::detail
