#include "shm/waiter.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <vector>

#include "dagr/error.h"
#include "executor.h"
#include "fault_report.h"

namespace dagr::detail {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The segment is shared between processes: no FUTEX_PRIVATE_FLAG.
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::chrono::microseconds max) {
  timespec ts{static_cast<time_t>(max.count() / 1'000'000), static_cast<long>(max.count() % 1'000'000) * 1000};
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake_all(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

FaultKind fault_kind(RankState why) {
  return why == RankState::dead ? FaultKind::dead : why == RankState::left ? FaultKind::left : FaultKind::silent;
}

}  // namespace

void Waiter::notify() const {
  SegmentHeader& h = view_.header();
  std::atomic_thread_fence(std::memory_order_seq_cst);  // publish before looking for sleepers
  if (h.sleepers.load(std::memory_order_relaxed) != 0) {
    h.event.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&h.event);
  }
}

// The first failure seen in a group is written into its header (layout.h) so
// that every other waiter gives up too, then reported to the launcher
// (fault_report.h), then thrown.
void Waiter::fail(int peer, RankState why, const std::string& message, bool timeout) const {
  SegmentHeader& h = view_.header();
  const int pid = view_.control(peer).pid;
  std::int32_t none = 0;
  if (h.broken.compare_exchange_strong(none, -1, std::memory_order_acq_rel)) {
    h.broken_why.store(why, std::memory_order_relaxed);
    h.broken_pid = pid;
    h.broken.store(peer + 1, std::memory_order_release);
  }
  notify();
  if (pid <= 0 && world_)
    report_absent(peer);  // never attached: known only by its rank
  else
    report_fault(fault_kind(why),
                 pid);
  if (timeout) throw TimeoutError(message);
  throw PeerError(message);
}

// A rank that leaves on purpose stores `left` before it drops its liveness
// lock; so a lock found free while the state still says `attached` (read again
// after the lock) means the process is gone without leaving: it died.
RankState Waiter::peer_state(int peer) const {
  RankControl& c = view_.control(peer);
  RankState state = c.state.load(std::memory_order_acquire);
  if (state == RankState::attached && !segment_.rank_locked(peer)) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (c.state.compare_exchange_strong(state, RankState::dead, std::memory_order_acq_rel))
      state = RankState::dead;
  }
  return state;
}

void Waiter::fail_peer(int peer, RankState state, const WaitContext& context) const {
  const int pid = view_.control(peer).pid;
  if (state == RankState::dead)
    fail(peer, state, concat("rank ", peer, " (pid ", pid, ") died while rank ", self_, " waited for it in ",
                             context.describe()));
  fail(peer, state, concat("rank ", peer, " (pid ", pid, ") left the group (its communicator was destroyed) while rank ",
                           self_, " waited for it in ", context.describe()));
}

void Waiter::check_group(const WaitContext& context) const {
  const SegmentHeader& h = view_.header();
  const std::int32_t broken = h.broken.load(std::memory_order_acquire);
  if (broken <= 0) return;
  const int peer = broken - 1;
  const RankState why = h.broken_why.load(std::memory_order_relaxed);
  const char* what = why == RankState::dead ? "died" : why == RankState::left ? "left the group" : "went silent";
  report_fault(fault_kind(why),
               h.broken_pid);
  throw PeerError(concat("rank ", peer, " (pid ", h.broken_pid, ") ", what, ", so the group gave up ",
                         context.describe(), " on rank ", self_));
}

namespace {

std::int64_t ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Publishes what this rank waits for while a slow wait lasts.
struct WaitingFor {
  RankControl& me;
  WaitingFor(RankControl& control, int peer) : me(control) {
    me.heartbeat_ns.store(ns(Clock::now()), std::memory_order_relaxed);
    me.waiting_for.store(peer, std::memory_order_release);
  }
  ~WaitingFor() { me.waiting_for.store(-1, std::memory_order_release); }
};

}  // namespace

// A timed-out wait on `peer` blames the rank at the end of the chain of
// waits: peer may itself be waiting, alive and well, for a rank that stopped.
// A rank is silent when it is not waiting, or its heartbeat is older than
// 500 ms (it was stopped, or it is stuck outside dagr).
int Waiter::silent_rank(int peer) const {
  const std::int64_t stale = ns(Clock::now()) - 500'000'000;
  std::vector<bool> seen(static_cast<std::size_t>(view_.layout().size));
  for (int r = peer; r >= 0 && r < view_.layout().size && !seen[static_cast<std::size_t>(r)];) {
    seen[static_cast<std::size_t>(r)] = true;
    const RankControl& c = view_.control(r);
    const int next = c.waiting_for.load(std::memory_order_acquire);
    if (next < 0 || next == self_ || c.heartbeat_ns.load(std::memory_order_relaxed) < stale) return r;
    r = next;
  }
  return peer;
}

void Waiter::wait_slow(int peer, const WaitContext& context, bool (*ready)(const void*),
                       const void* arg) const {
  using std::chrono::microseconds;
  const auto start = Clock::now();
  // A background thread (async calls) shares its process's cores with the
  // compute it overlaps: it spins briefly and then sleeps, never yield-loops.
  const bool background = running_in_background();
  const auto spin_until = start + microseconds(background ? std::min(policy_.spin_us, 5u) : policy_.spin_us);
  const auto yield_until = spin_until + microseconds(background ? 0 : policy_.yield_us);
  auto next_check = start + std::chrono::milliseconds(1);

  // Phase 1: spin, reading the clock every 64 polls.
  for (bool spinning = policy_.spin_us > 0; spinning;) {
    for (int i = 0; i < 64; ++i) {
      if (ready(arg)) return;
      cpu_relax();
    }
    spinning = Clock::now() < spin_until;
  }
  // Phases 2 and 3: yield, then sleep in short slices; check the peer and the
  // deadline, and renew the heartbeat, each ms.
  SegmentHeader& h = view_.header();
  const WaitingFor waiting(view_.control(self_), peer);
  for (;;) {
    const auto now = Clock::now();
    if (now >= next_check) {
      if (ready(arg)) return;
      waiting.me.heartbeat_ns.store(ns(now), std::memory_order_relaxed);
      // The peer may publish, finish and leave (or the group break) between
      // the check above and these: what it published before still counts, so
      // a failure is looked at once more after ready() (the state is read
      // with acquire, and a rank stores `left` after all it published).
      const RankState state = peer_state(peer);
      const bool gone = state == RankState::dead || state == RankState::left;
      if (gone || view_.header().broken.load(std::memory_order_acquire) > 0) {
        if (ready(arg)) return;
        if (gone) fail_peer(peer, state, context);
        check_group(context);
      }
      if (now >= context.deadline) {
        const int silent = silent_rank(peer);
        const int pid = view_.control(silent).pid;
        fail(silent, RankState::absent,
             concat("rank ", self_, " timed out after ", context.timeout.count() / 1000.0, " s waiting for rank ", peer,
                    silent != peer ? concat(", itself waiting for rank ", silent) : std::string(),
                    pid > 0 ? concat(" (pid ", pid, ")") : std::string(), ", which stopped responding, in ",
                    context.describe()),
             true);
      }
      next_check = now + std::chrono::milliseconds(1);
    }
    if (now < yield_until) {
      sched_yield();
      if (ready(arg)) return;
      continue;
    }
    h.sleepers.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint32_t seen = h.event.load(std::memory_order_seq_cst);
    const bool done = ready(arg);
    if (!done) futex_wait(&h.event, seen, microseconds(2000));
    h.sleepers.fetch_sub(1, std::memory_order_seq_cst);
    if (done || ready(arg)) return;
  }
}

}  // namespace dagr::detail
