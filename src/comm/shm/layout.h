// What lies where in a group's shared-memory segment.
//
//   SegmentHeader                      magic, geometry, admission tag, attach count, futex word
//   RankControl[size]                  per rank: pipeline counters, liveness
//   slot[size][2]                      per rank, per parity of the call number:
//                                      the call's fingerprint + small payload
//   staging[size][buffers]             per rank: segment buffers of the large path
//   channel[size][size]                per ordered pair: ring buffer for send/recv
//
// Every field one rank writes and others poll sits on its own cache line.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "request.h"
#include "shm/settings.h"

namespace dagr::detail {

constexpr std::size_t kCacheLine = 64;
constexpr int kMaxRanks = 256;  // of one shared-memory group

struct alignas(kCacheLine) PaddedCounter {
  std::atomic<std::uint64_t> value;
};

enum class RankState : std::int32_t { absent = 0, attached = 1, left = 2, dead = 3 };

struct RankControl {
  // Monotonic counts of pipeline segments, over the life of the group.
  PaddedCounter posted;    // this rank's input of segment g is in its staging buffer
  PaddedCounter reduced;   // this rank's reduced piece of segment g is in its staging buffer
  PaddedCounter consumed;  // this rank no longer reads anyone's staging for segment g
  // The call number of the last allreduce on shared buffers (shm_shared.cc)
  // whose result this rank has written into every rank's buffer.
  PaddedCounter written;
  // attached → left when the rank leaves on purpose; attached → dead when a
  // peer finds its liveness lock (segment.h) released without leaving.
  alignas(kCacheLine) std::atomic<RankState> state;
  std::int32_t pid;
  // The rank's number in the group `dagr launch` started (its RANK), which
  // errors use: a subgroup's own numbers mean nothing to the user. Set with
  // pid, before `attached`; meaningless while pid is 0.
  std::int32_t world_rank;
  // While this rank waits past its spin: the peer it waits for (-1: none) and
  // a heartbeat (steady-clock ns) renewed every millisecond. A stopped process
  // renews nothing, which is how a timeout finds the silent rank at the end of
  // a chain of waits (waiter.cc).
  alignas(kCacheLine) std::atomic<std::int32_t> waiting_for;
  std::atomic<std::int64_t> heartbeat_ns;
  // After a failed wait, until its next wait: 1 + the launched-group rank this
  // rank blamed (0: none). A chain of waits that reaches a rank which gave up
  // ends at the rank it blamed, not at the rank that gave up.
  std::atomic<std::int32_t> blames;
  // Shrinking (shm_shrink.cc): the round this rank has joined, and what it
  // published for the round it last published (a seqlock on `published`).
  alignas(kCacheLine) std::atomic<std::uint64_t> shrink_joined;
  std::atomic<std::uint64_t> shrink_published;
  std::atomic<std::uint64_t> shrink_members[kMaxRanks / 64];
  std::atomic<std::uint64_t> shrink_value;
};

// Line 0 of a slot: published last (seq), read first. The first 32 bytes of
// the payload share the line, so a tiny collective moves one line.
struct SlotHeader {
  std::atomic<std::uint64_t> seq;  // the call number whose fingerprint (and payload) this holds
  Fingerprint fingerprint;
};
constexpr std::size_t kSlotPayloadOffset = 32;
static_assert(sizeof(SlotHeader) <= kSlotPayloadOffset);

struct alignas(kCacheLine) ChannelControl {
  PaddedCounter head;                // bytes written by the sender, ever
  PaddedCounter tail;                // bytes read by the receiver, ever
  alignas(kCacheLine) std::atomic<std::uint32_t> broken;  // receiver saw a mismatch
};

struct MessageHeader {  // precedes every send/recv message in its channel
  Fingerprint fingerprint;
  std::int64_t tag;
};

constexpr std::uint64_t kSegmentReady = 0x64616772'00000003ull;  // "dagr" v3 (v2: admission fields, v3: written)

struct SegmentHeader {
  std::atomic<std::uint64_t> magic;  // kSegmentReady once rank 0 initialised everything
  std::int32_t size;
  ShmGeometry geometry;
  // Admission (job_secret.h): whether rank 0 was given a job secret and, if it
  // was, a random salt and the secret's tag. A joining rank compares its own
  // tag with this one before it takes a place.
  std::uint32_t secured;
  std::array<std::uint8_t, 16> salt;
  std::array<std::uint8_t, 32> tag;  // AdmissionTag
  std::atomic<std::uint32_t> attached;
  // Set once, by the first rank that finds a peer dead, departed or silent:
  // 1 + that peer's rank, and why (RankState::dead/left, or absent for silent).
  // Every rank waiting anywhere in the group sees it within a millisecond and
  // raises PeerError too, so no survivor waits for a survivor that gave up.
  std::atomic<std::int32_t> broken;
  std::atomic<RankState> broken_why;
  std::int32_t broken_pid;
  std::int32_t broken_world_rank;  // the culprit's number in the launched group (it may be in another group)
  // The last shrink that formed a group, and its members (a rank that arrived
  // too late finds itself left out here).
  std::atomic<std::uint64_t> formed_round;
  std::atomic<std::uint64_t> formed_members[kMaxRanks / 64];
  alignas(kCacheLine) std::atomic<std::uint32_t> event;     // futex word: bumped to wake sleepers
  alignas(kCacheLine) std::atomic<std::uint32_t> sleepers;  // ranks asleep on `event`
};

// Byte offsets of each region, from the group size and geometry alone.
struct Layout {
  int size;
  ShmGeometry geometry;
  std::size_t control, slots, slot_bytes, staging, channels, channel_stride, total;

  Layout(int size, const ShmGeometry& g);
};

// Typed views of one mapped segment.
class SegmentView {
 public:
  SegmentView(std::byte* base, const Layout& layout) : base_(base), layout_(layout) {}

  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }
  RankControl& control(int rank) const {
    return reinterpret_cast<RankControl*>(base_ + layout_.control)[rank];
  }
  SlotHeader& slot(int rank, std::uint64_t seq) const {
    return *reinterpret_cast<SlotHeader*>(slot_base(rank, seq));
  }
  std::byte* payload(int rank, std::uint64_t seq) const {
    return slot_base(rank, seq) + kSlotPayloadOffset;
  }
  std::byte* staging(int rank, std::uint64_t global_segment) const {
    const std::size_t b = global_segment % layout_.geometry.buffers;
    return base_ + layout_.staging +
           (static_cast<std::size_t>(rank) * layout_.geometry.buffers + b) *
               layout_.geometry.segment_bytes;
  }
  ChannelControl& channel(int from, int to) const {
    return *reinterpret_cast<ChannelControl*>(channel_base(from, to));
  }
  std::byte* ring(int from, int to) const { return channel_base(from, to) + sizeof(ChannelControl); }
  const Layout& layout() const { return layout_; }

 private:
  std::byte* slot_base(int rank, std::uint64_t seq) const {
    return base_ + layout_.slots + (static_cast<std::size_t>(rank) * 2 + (seq & 1)) * layout_.slot_bytes;
  }
  std::byte* channel_base(int from, int to) const {
    return base_ + layout_.channels +
           (static_cast<std::size_t>(from) * layout_.size + to) * layout_.channel_stride;
  }
  std::byte* base_;
  Layout layout_;
};

}  // namespace dagr::detail
