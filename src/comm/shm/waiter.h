// Waiting for another rank through shared memory: spin, then yield, then sleep.
//
// A waiter first busy-polls (the cheapest wake-up there is: ~0.1 µs across
// cores), then hands its core over with sched_yield (what a rank needs when
// ranks outnumber cores), then sleeps on the group's futex word so an idle
// rank burns no core. A rank that publishes something calls notify(), which
// costs a fence and one load unless somebody sleeps. On the background thread
// of async calls, a waiter spins at most 5 µs and then sleeps: its process's
// other threads are computing and need the core more — unless they are all
// blocked waiting for its calls (a DDP step's last bucket), when it spins as
// long as a caller would: waking from the futex costs tens of µs on a VM.
//
// Every wait is bounded by the call's deadline (TimeoutError) and watches the
// peer it waits for: a peer that died or left turns into PeerError. The first
// such failure marks the whole group broken, and every other wait in it then
// ends in PeerError within a millisecond.
#pragma once

#include <functional>
#include <string>

#include "shm/layout.h"
#include "shm/segment.h"
#include "shm/settings.h"

namespace dagr::detail {

struct WaitContext {
  Clock::time_point deadline;
  std::chrono::milliseconds timeout;
  std::function<std::string()> describe;  // "allreduce #7 (float32, count=10)", for errors
};

class Waiter {
 public:
  // `world`: this is the group `dagr launch` started (see ShmBackend::join).
  Waiter(const Segment& segment, SegmentView view, int self, WaitPolicy policy, bool world)
      : segment_(segment), view_(view), self_(self), policy_(policy), world_(world) {}

  // Returns once ready() holds. Throws TimeoutError/PeerError naming `peer`.
  template <class Ready>
  void wait(int peer, const WaitContext& context, const Ready& ready) const {
    if (ready()) return;
    wait_slow(peer, context, [](const void* r) { return (*static_cast<const Ready*>(r))(); }, &ready);
  }

  // Wakes sleeping waiters; call after every store others may wait for.
  void notify() const;

  // PeerError if another rank already found the group broken.
  void check_group(const WaitContext& context) const;

  // "rank N", N being rank r's number in the group `dagr launch` started (the
  // launcher's and the user's numbering, whatever group this is); "rank r of
  // this group" for a rank of a subgroup that never attached.
  std::string name_of(int r) const;

  // The launched group's segment, where every process has a control block:
  // each wait in any group is also published there (in that group's
  // numbering), so that a timeout can follow a chain of waits across groups
  // (a pipeline stage waiting for its neighbour, which waits for its tensor
  // group). Set by the launched group's backend while it is attached.
  static void attach_world(const SegmentView& view, int self);
  static void detach_world(const SegmentHeader& header);  // if `header`'s group is the one attached
  // This rank gave up blaming launched-group rank `world_rank` (-1: unknown),
  // noted in RankControl::blames here and in the launched group's record, so
  // that a rank waiting for this one follows the chain to the culprit.
  void note_blame(int world_rank) const;

 private:
  struct Silent {
    int world_rank, pid;
  };
  // The end of the chain of waits from `peer`: in the launched group's
  // record when there is one (any group), else in this group.
  Silent silent_rank(int peer) const;
  // `peer`'s state, turned to dead when its liveness lock is gone (segment.h).
  RankState peer_state(int peer) const;
  [[noreturn]] void fail_peer(int peer, RankState state, const WaitContext& context) const;
  // Marks the group broken by `peer` (this group's rank; the culprit, known by
  // its launched-group rank and pid, may be in another group), reports, throws.
  [[noreturn]] void fail(int peer, RankState why, const std::string& message, bool timeout = false,
                         const Silent* culprit = nullptr) const;
  void wait_slow(int peer, const WaitContext& context, bool (*ready)(const void*),
                 const void* arg) const;

  const Segment& segment_;  // holds the ranks' liveness locks
  SegmentView view_;
  int self_;
  WaitPolicy policy_;
  bool world_;
};

}  // namespace dagr::detail
