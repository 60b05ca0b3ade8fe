// Shrinking a broken shared-memory group to the ranks still alive.
//
// After a rank died, left or went silent, the others still map the old
// segment, and the kernel still tells them who holds a liveness lock (see
// segment.h): a perfect failure detector. They agree on the survivors in
// rounds, each round in the old segment:
//
//   1. join     this rank stores the round number in its `shrink_joined`, then
//               waits for every other rank to join the round too, to be found
//               dead or gone, or — past the deadline — to be left out (a
//               silent rank). Its view S = itself and the ranks that joined.
//   2. publish  it publishes S and its value (a seqlock: data first, then the
//               round in `shrink_published`), then reads every member's
//               publication for the round. All equal: agreed. A member that
//               published a later round, or a different S, or died meanwhile:
//               next round.
//
// Views can only differ when a rank joined or died during a round, and then
// every member that waits on it sees the difference, so no two ranks agree on
// different groups. A segment is shrunk once (the survivors move on to a new
// one), so a rank that arrives after the others formed their group finds
// `formed_round` set in the header and gets PeerError: it was left out.
// The agreed members then join a fresh segment named after the old one and the
// round, renumbered in old-rank order; the new rank 0 creates it.
#include <algorithm>
#include <bit>
#include <thread>

#include "dagr/error.h"
#include "shm/shm_backend.h"

namespace dagr::detail {
namespace {

using Members = std::array<std::uint64_t, kMaxRanks / 64>;

bool has(const Members& m, int rank) { return (m[rank / 64] >> (rank % 64)) & 1; }
void add(Members& m, int rank) { m[rank / 64] |= std::uint64_t{1} << (rank % 64); }

template <class Atomics>
Members load(const Atomics& words) {
  Members m{};
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = words[i].load(std::memory_order_relaxed);
  return m;
}

// What a member published for a round, read consistently.
struct Publication {
  std::uint64_t round;
  Members members;
  std::uint64_t value;
};

Publication read_publication(const RankControl& c) {
  for (;;) {
    Publication p;
    p.round = c.shrink_published.load(std::memory_order_acquire);
    p.members = load(c.shrink_members);
    p.value = c.shrink_value.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (c.shrink_published.load(std::memory_order_relaxed) == p.round) return p;
  }
}

}  // namespace

bool ShmBackend::gone(int peer) const {
  const RankControl& c = view_.control(peer);
  const RankState state = c.state.load(std::memory_order_acquire);
  if (state == RankState::left || state == RankState::dead) return true;
  return state == RankState::attached && !segment_.rank_locked(peer) &&
         c.state.load(std::memory_order_acquire) == RankState::attached;
}

ShrinkOutcome ShmBackend::shrink(std::uint64_t value, std::chrono::milliseconds timeout) {
  RankControl& me = view_.control(rank_);
  SegmentHeader& h = view_.header();
  // Ranks reach the shrink up to one timeout apart: joining waits one timeout
  // for a silent rank, publishing may wait one more for the slowest survivor.
  const auto join_deadline = Clock::now() + timeout, publish_deadline = join_deadline + timeout;
  auto left_out = [&] {
    DAGR_ENFORCE(h.formed_round.load(std::memory_order_acquire) == 0 || has(load(h.formed_members), rank_),
                 PeerError, waiter_.name_of(rank_),
                 " was left out: the other survivors formed a group without it (it came after their timeout)");
  };
  auto pause = [] { std::this_thread::sleep_for(std::chrono::microseconds(200)); };
  for (std::uint64_t round = me.shrink_joined.load() + 1;; ++round) {
    left_out();
    // 1. join
    me.shrink_joined.store(round, std::memory_order_release);
    Members view{};
    for (int p = 0; p < size_; ++p) {
      auto joined = [&] { return view_.control(p).shrink_joined.load(std::memory_order_acquire) >= round; };
      if (p != rank_)
        while (!joined() && !gone(p) && Clock::now() < join_deadline) {
          left_out();
          pause();
        }
      if (p == rank_ || (joined() && !gone(p))) add(view, p);
    }
    // 2. publish, then compare
    for (std::size_t i = 0; i < view.size(); ++i) me.shrink_members[i].store(view[i], std::memory_order_relaxed);
    me.shrink_value.store(value, std::memory_order_relaxed);
    me.shrink_published.store(round, std::memory_order_release);
    bool agreed = true;
    std::uint64_t agreed_min = value;
    for (int p = 0; p < size_ && agreed; ++p) {
      if (p == rank_ || !has(view, p)) continue;
      Publication pub = read_publication(view_.control(p));
      while (pub.round < round && !gone(p)) {
        left_out();
        DAGR_ENFORCE(Clock::now() < publish_deadline, TimeoutError, waiter_.name_of(rank_),
                     " timed out shrinking the group: ", waiter_.name_of(p), " joined but did not publish its view");
        pause();
        pub = read_publication(view_.control(p));
      }
      agreed = pub.round == round && pub.members == view;
      agreed_min = std::min(agreed_min, pub.value);
    }
    if (!agreed) {
      DAGR_ENFORCE(Clock::now() < publish_deadline, TimeoutError, waiter_.name_of(rank_),
                   " could not agree with the other survivors on who is left before the timeout");
      continue;
    }
    // Agreed (every member writes the same): later arrivals find themselves left out.
    for (std::size_t i = 0; i < view.size(); ++i) h.formed_members[i].store(view[i], std::memory_order_relaxed);
    h.formed_round.store(round, std::memory_order_release);

    ShrinkOutcome out;
    for (int p = 0; p < size_; ++p)
      if (has(view, p)) out.survivors.push_back(p);
    out.agreed_min = agreed_min;
    const auto new_rank = static_cast<int>(std::find(out.survivors.begin(), out.survivors.end(), rank_) -
                                           out.survivors.begin());
    const int new_size = static_cast<int>(out.survivors.size());
    out.backend = new_size == 1 ? solo() : join(concat(name_, ".s", round), new_rank, new_size, publish_deadline, false, world_rank_);
    return out;
  }
}

}  // namespace dagr::detail
