// Waiting for another rank through shared memory: spin, then yield, then sleep.
//
// A waiter first busy-polls (the cheapest wake-up there is: ~0.1 µs across
// cores), then hands its core over with sched_yield (what a rank needs when
// ranks outnumber cores), then sleeps on the group's futex word so an idle
// rank burns no core. A rank that publishes something calls notify(), which
// costs a fence and one load unless somebody sleeps. On the background thread
// of async calls, a waiter spins at most 5 µs and then sleeps: its process's
// other threads are computing and need the core more.
//
// Every wait is bounded by the call's deadline (TimeoutError) and watches the
// peer it waits for: a peer that died or left turns into PeerError.
#pragma once

#include <functional>
#include <string>

#include "shm/layout.h"
#include "shm/settings.h"

namespace dagr::detail {

struct WaitContext {
  Clock::time_point deadline;
  std::chrono::milliseconds timeout;
  std::function<std::string()> describe;  // "allreduce #7 (float32, count=10)", for errors
};

class Waiter {
 public:
  Waiter(SegmentView view, int self, WaitPolicy policy) : view_(view), self_(self), policy_(policy) {}

  // Returns once ready() holds. Throws TimeoutError/PeerError naming `peer`.
  template <class Ready>
  void wait(int peer, const WaitContext& context, const Ready& ready) const {
    if (ready()) return;
    wait_slow(peer, context, [](const void* r) { return (*static_cast<const Ready*>(r))(); }, &ready);
  }

  // Wakes sleeping waiters; call after every store others may wait for.
  void notify() const;

  // PeerError if `peer` died or left.
  void check_alive(int peer, const WaitContext& context) const;

 private:
  void wait_slow(int peer, const WaitContext& context, bool (*ready)(const void*),
                 const void* arg) const;

  SegmentView view_;
  int self_;
  WaitPolicy policy_;
};

}  // namespace dagr::detail
