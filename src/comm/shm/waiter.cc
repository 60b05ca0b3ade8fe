#include "shm/waiter.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <mutex>
#include <utility>
#include <optional>
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

// Ends every sleep on the header's word, this process's background waits
// among them (BackgroundSleep); the others find nothing new and sleep again.
void wake_event(void* header) {
  auto* h = static_cast<SegmentHeader*>(header);
  h->event.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&h->event);
}

FaultKind fault_kind(RankState why) {
  return why == RankState::dead ? FaultKind::dead : why == RankState::left ? FaultKind::left : FaultKind::silent;
}

// The launched group's segment (Waiter::attach_world), read and written under
// the mutex: the group may be destroyed while another group still waits.
struct WorldRecord {
  std::mutex mutex;
  std::optional<SegmentView> view;
  int self = -1;
};
WorldRecord& world_record() {
  static auto* record = new WorldRecord;  // never destroyed: waits may outlive static destruction
  return *record;
}

}  // namespace

void Waiter::attach_world(const SegmentView& view, int self) {
  WorldRecord& w = world_record();
  std::lock_guard lock(w.mutex);
  w.view.emplace(view);
  w.self = self;
}

void Waiter::detach_world(const SegmentHeader& header) {
  WorldRecord& w = world_record();
  std::lock_guard lock(w.mutex);
  if (!w.view || &w.view->header() != &header) return;
  w.view.reset();
  w.self = -1;
}

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
// This rank gave up blaming launched-group rank `world_rank` (-1: unknown):
// noted here and in the launched group's record, for chains through it.
void Waiter::note_blame(int world_rank) const {
  const std::int32_t blames = world_rank >= 0 ? world_rank + 1 : 0;
  view_.control(self_).blames.store(blames, std::memory_order_release);
  WorldRecord& w = world_record();
  std::lock_guard lock(w.mutex);
  if (w.view && &w.view->header() != &view_.header())
    w.view->control(w.self).blames.store(blames, std::memory_order_release);
}

void Waiter::fail(int peer, RankState why, const std::string& message, bool timeout, const Silent* culprit) const {
  SegmentHeader& h = view_.header();
  const RankControl& c = view_.control(peer);
  const int pid = culprit ? culprit->pid : c.pid;
  const int culprit_world_rank = culprit ? culprit->world_rank : c.pid > 0 ? c.world_rank : -1;
  note_blame(culprit_world_rank);
  std::int32_t none = 0;
  if (h.broken.compare_exchange_strong(none, -1, std::memory_order_acq_rel)) {
    h.broken_why.store(why, std::memory_order_relaxed);
    h.broken_pid = pid;
    h.broken_world_rank = culprit_world_rank;
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

std::string Waiter::name_of(int r) const {
  const RankControl& c = view_.control(r);
  if (c.pid > 0) return concat("rank ", c.world_rank);
  return world_ ? concat("rank ", r) : concat("rank ", r, " of this group");
}

void Waiter::fail_peer(int peer, RankState state, const WaitContext& context) const {
  const int pid = view_.control(peer).pid;
  if (state == RankState::dead)
    fail(peer, state, concat(name_of(peer), " (pid ", pid, ") died while ", name_of(self_), " waited for it in ",
                             context.describe()));
  // A peer that left because a wait of its own failed passes the blame on
  // (RankControl::blames, here or in another group, through the launched
  // group's record).
  const RankControl& c = view_.control(peer);
  const Silent end = silent_rank(peer);
  const bool passed_on = c.pid > 0 && end.world_rank != c.world_rank;
  fail(peer, state, concat(name_of(peer), " (pid ", pid, ") ",
                           passed_on ? concat("gave up, blaming rank ", end.world_rank,
                                              end.pid > 0 ? concat(" (pid ", end.pid, "),") : std::string(","))
                                     : std::string("left the group (its communicator was destroyed)"),
                           " while ", name_of(self_), " waited for it in ", context.describe()));
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
  note_blame(h.broken_world_rank);
  const std::string culprit = h.broken_world_rank >= 0 ? concat("rank ", h.broken_world_rank) : name_of(peer);
  throw PeerError(concat(culprit, " (pid ", h.broken_pid, ") ", what, ", so the group gave up ",
                         context.describe(), " on ", name_of(self_)));
}

namespace {

std::int64_t ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Publishes what this rank waits for while a slow wait lasts: in this group,
// and (another group) in the launched group's record, by launched-group rank.
// Several threads of a process may wait at once; the record holds the last
// one renewed, and a wait that ends clears it only if it still holds its own.
struct WaitingFor {
  RankControl& me;
  const SegmentHeader& group;  // which segment `me` is in
  int world_peer;              // the peer's launched-group rank; -1: unknown
  WaitingFor(RankControl& control, const SegmentHeader& header, int peer, int peer_world)
      : me(control), group(header), world_peer(peer_world) {
    me.blames.store(0, std::memory_order_relaxed);  // waiting again: no longer a rank that gave up
    me.waiting_for.store(peer, std::memory_order_release);
    renew(ns(Clock::now()));
  }
  // Each ms: the heartbeat here, and the wait in the launched group's record.
  void renew(std::int64_t now) const {
    me.heartbeat_ns.store(now, std::memory_order_relaxed);
    if (world_peer < 0) return;
    WorldRecord& w = world_record();
    std::lock_guard lock(w.mutex);
    if (!w.view || &w.view->header() == &group) return;  // this is the launched group
    RankControl& record = w.view->control(w.self);
    record.blames.store(0, std::memory_order_relaxed);
    record.waiting_for.store(world_peer, std::memory_order_release);
    record.heartbeat_ns.store(now, std::memory_order_relaxed);
  }
  ~WaitingFor() {
    me.waiting_for.store(-1, std::memory_order_release);
    if (world_peer < 0) return;
    WorldRecord& w = world_record();
    std::lock_guard lock(w.mutex);
    if (!w.view || &w.view->header() == &group) return;
    std::int32_t mine = world_peer;
    w.view->control(w.self).waiting_for.compare_exchange_strong(mine, -1, std::memory_order_acq_rel);
  }
};

// The rank of `view` whose launched-group rank is `world_rank`; -1: none.
int index_of(const SegmentView& view, int world_rank) {
  for (int r = 0; r < view.layout().size; ++r)
    if (view.control(r).pid > 0 && view.control(r).world_rank == world_rank) return r;
  return -1;
}

// The end of a chain of waits from `from` in `view`, as a launched-group rank
// and its pid (0: not in this view). A rank that gave up passes the chain on
// to the rank it blamed; the chain ends at a rank not waiting, or waiting for
// `self`, or whose heartbeat is older than `stale`; at `from` when it comes
// back on itself.
std::pair<int, int> chain_end(const SegmentView& view, int from, int self, std::int64_t stale) {
  const int size = view.layout().size;
  auto world_rank = [&](int r) { return view.control(r).pid > 0 ? view.control(r).world_rank : r; };
  std::vector<bool> seen(static_cast<std::size_t>(size));
  for (int r = from; r >= 0 && r < size && !seen[static_cast<std::size_t>(r)];) {
    seen[static_cast<std::size_t>(r)] = true;
    const RankControl& c = view.control(r);
    if (const int blames = c.blames.load(std::memory_order_acquire); blames > 0) {
      r = index_of(view, blames - 1);
      if (r < 0) return {blames - 1, 0};
      continue;
    }
    const int next = c.waiting_for.load(std::memory_order_acquire);
    if (next < 0 || next == self || c.heartbeat_ns.load(std::memory_order_relaxed) < stale)
      return {world_rank(r), c.pid};
    r = next;
  }
  return {world_rank(from), view.control(from).pid};
}

}  // namespace

// A timed-out wait on `peer` blames the rank at the end of the chain of
// waits: peer may itself be waiting, alive and well, for a rank that stopped,
// in this group or another (the launched group's record has every process's
// waits). A rank is silent when it is not waiting, or its heartbeat is older
// than 500 ms (it was stopped, or it is stuck outside dagr).
Waiter::Silent Waiter::silent_rank(int peer) const {
  const std::int64_t stale = ns(Clock::now()) - 500'000'000;
  const RankControl& p = view_.control(peer);
  {
    WorldRecord& w = world_record();
    std::lock_guard lock(w.mutex);
    if (w.view && p.pid > 0 && p.world_rank >= 0 && p.world_rank < w.view->layout().size) {
      const auto [world_rank, pid] = chain_end(*w.view, p.world_rank, w.self, stale);
      return {world_rank, pid};
    }
  }
  const auto [world_rank, pid] = chain_end(view_, peer, self_, stale);
  return {world_rank, pid};
}

void Waiter::wait_slow(int peer, const WaitContext& context, bool (*ready)(const void*),
                       const void* arg) const {
  using std::chrono::microseconds;
  const auto start = Clock::now();
  // A background thread (async calls) shares its process's cores with the
  // compute it overlaps: it spins briefly and then sleeps, never yield-loops.
  // While the process's callers are blocked waiting for it, nothing computes
  // beside it, and it spins as long as a caller would (looked at each round,
  // and a caller who starts to wait wakes it from its sleep to spin).
  const bool background = running_in_background();
  auto full_spin = start + microseconds(policy_.spin_us);
  const auto brief_spin = start + microseconds(std::min(policy_.spin_us, 5u));
  auto spin_until = background ? brief_spin : full_spin;
  auto next_check = start + std::chrono::milliseconds(1);
  bool spun_for_caller = false;

  // Phase 1: spin, reading the clock every 64 polls.
  auto spin = [&] {
    for (bool spinning = policy_.spin_us > 0; spinning;) {
      for (int i = 0; i < 64; ++i) {
        if (ready(arg)) return true;
        cpu_relax();
      }
      if (background) {
        const bool caller_waits = foreground_waiting();
        spun_for_caller = spun_for_caller || caller_waits;
        spin_until = caller_waits ? full_spin : brief_spin;
      }
      spinning = Clock::now() < spin_until;
    }
    return false;
  };
  if (spin()) return;
  const auto yield_until = spin_until + microseconds(background ? 0 : policy_.yield_us);
  // Phases 2 and 3: yield, then sleep in short slices; check the peer and the
  // deadline, and renew the heartbeat, each ms.
  SegmentHeader& h = view_.header();
  const RankControl& peer_control = view_.control(peer);
  const WaitingFor waiting(view_.control(self_), h, peer, peer_control.pid > 0 ? peer_control.world_rank : -1);
  for (;;) {
    const auto now = Clock::now();
    if (now >= next_check) {
      if (ready(arg)) return;
      waiting.renew(ns(now));
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
        const Silent silent = silent_rank(peer);
        const bool is_peer = peer_control.pid > 0 ? silent.world_rank == peer_control.world_rank : silent.pid <= 0;
        // The group is marked broken by its own rank at the end of the chain
        // when the culprit is in this group, else by the peer that waits for it.
        const int culprit_here = index_of(view_, silent.world_rank);
        fail(culprit_here >= 0 ? culprit_here : peer, RankState::absent,
             concat(name_of(self_), " timed out after ", context.timeout.count() / 1000.0, " s waiting for ",
                    name_of(peer), is_peer ? std::string() : concat(", itself waiting for rank ", silent.world_rank),
                    silent.pid > 0 ? concat(" (pid ", silent.pid, ")") : std::string(), ", which stopped responding, in ",
                    context.describe()),
             true, &silent);
      }
      next_check = now + std::chrono::milliseconds(1);
    }
    if (now < yield_until) {
      sched_yield();
      if (ready(arg)) return;
      continue;
    }
    // A background wait that has not spun for a waiting caller yet sleeps
    // registered, so that a caller who starts to wait can wake it to spin.
    std::optional<BackgroundSleep> asleep;
    if (background && !spun_for_caller && policy_.spin_us > 0) asleep.emplace(wake_event, &h);
    h.sleepers.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint32_t seen = h.event.load(std::memory_order_seq_cst);
    const bool done = ready(arg);
    const bool caller_waits = asleep && foreground_waiting();
    if (!done && !caller_waits) futex_wait(&h.event, seen, microseconds(2000));
    h.sleepers.fetch_sub(1, std::memory_order_seq_cst);
    asleep.reset();
    if (done || ready(arg)) return;
    // A caller waits: spin once more, once per wait, as a caller's own wait
    // spins once. (One that woke this sleep is seen on the next round.)
    if (caller_waits) {
      full_spin = Clock::now() + microseconds(policy_.spin_us);
      if (spin()) return;
    }
  }
}

}  // namespace dagr::detail
