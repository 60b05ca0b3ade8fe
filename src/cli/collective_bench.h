// Timing one collective at one size, as nccl-tests does: back-to-back calls,
// the time per call the slowest rank saw, then one checked call.
#pragma once

#include <cstddef>

#include "dagr/comm/communicator.h"

namespace dagr::cli {

struct BenchSpec {
  OpKind kind = OpKind::allreduce;
  DType dtype = DType::float32;
  ReduceOp op = ReduceOp::sum;
  std::size_t bytes = 8;  // nccl-tests' "size": the larger of the send and receive buffers
  int iters = 0;          // 0: as many as fit in about `seconds`
  int warmup = -1;        // -1: 100 calls below 64 KiB, 5 above (as the anchors do)
  double seconds = 0.3;
  bool secure = false;  // allreduce float32 sum/avg through a SecureAggregator (clip 64)
  bool shared = false;  // allreduce in place on Communicator::allocate_shared memory
};

struct BenchRow {
  std::size_t bytes, count;  // count: elements in the larger buffer
  double time_us, algbw, busbw;  // GB/s; busbw = algbw · nccl-tests' factor for the collective
  bool correct;
};

BenchRow bench_collective(Communicator& comm, const BenchSpec& spec);

// nccl-tests' bus-bandwidth factor: 2(n-1)/n allreduce, (n-1)/n allgather and
// reduce_scatter, 1 broadcast.
double bus_factor(OpKind kind, int ranks);

}  // namespace dagr::cli
