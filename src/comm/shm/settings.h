// The shared-memory transport's settings, each read from the environment with
// its default here and nowhere else (as NCCL's transport/shm.cc does).
//
// Geometry fixes the layout of a group's segment; rank 0 writes its own into
// the segment and every rank uses that copy, so ranks can never disagree on it.
// The wait policy is each process's own.
#pragma once

#include <cstdint>

namespace dagr::detail {

struct ShmGeometry {
  std::uint32_t small_max_bytes;   // payloads up to this size may take the one-step path…
  std::uint32_t small_read_bytes;  // …if size × payload (what each rank reads) is at most this
  std::uint32_t segment_bytes;    // the large path works in segments of this size
  std::uint32_t buffers;          // staging buffers per rank: segments in flight
  std::uint32_t channel_bytes;    // ring buffer of each ordered pair, for send/recv
};

struct WaitPolicy {
  std::uint32_t spin_us;   // busy-poll this long before yielding the core
  std::uint32_t yield_us;  // then sched_yield this long before sleeping on a futex
};

// DAGR_SHM_SMALL_MAX, DAGR_SHM_SMALL_READ, DAGR_SHM_SEGMENT, DAGR_SHM_BUFFERS,
// DAGR_SHM_CHANNEL (default: shrinks as the group grows, see settings.cc)
ShmGeometry geometry_from_env(int ranks);
WaitPolicy wait_policy_from_env(int local_ranks);  // DAGR_SPIN_US, DAGR_YIELD_US

}  // namespace dagr::detail
