#include "shm/waiter.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "dagr/error.h"
#include "executor.h"

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

}  // namespace

void Waiter::notify() const {
  SegmentHeader& h = view_.header();
  std::atomic_thread_fence(std::memory_order_seq_cst);  // publish before looking for sleepers
  if (h.sleepers.load(std::memory_order_relaxed) != 0) {
    h.event.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&h.event);
  }
}

void Waiter::check_alive(int peer, const WaitContext& context) const {
  RankControl& c = view_.control(peer);
  RankState state = c.state.load(std::memory_order_acquire);
  if (state == RankState::attached) {
    const int rc = pthread_mutex_trylock(&c.alive);
    if (rc == EOWNERDEAD || rc == ENOTRECOVERABLE) {
      if (rc == EOWNERDEAD) pthread_mutex_consistent(&c.alive);  // keep it held: stays "dead"
      c.state.store(RankState::dead, std::memory_order_release);
      state = RankState::dead;
    } else if (rc == 0) {
      pthread_mutex_unlock(&c.alive);  // released without dying: it is leaving
    }
  }
  DAGR_ENFORCE(state != RankState::dead, PeerError, "rank ", peer, " (pid ", c.pid,
               ") died while rank ", self_, " waited for it in ", context.describe());
  DAGR_ENFORCE(state != RankState::left, PeerError, "rank ", peer,
               " left the group (its communicator was destroyed) while rank ", self_,
               " waited for it in ", context.describe());
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
  // Phases 2 and 3: yield, then sleep in short slices; check the peer and the deadline each ms.
  SegmentHeader& h = view_.header();
  for (;;) {
    const auto now = Clock::now();
    if (now >= next_check) {
      if (ready(arg)) return;  // what the peer published before it left still counts
      check_alive(peer, context);
      DAGR_ENFORCE(now < context.deadline, TimeoutError, "rank ", self_, " timed out after ",
                   context.timeout.count() / 1000.0, " s waiting for rank ", peer, " in ",
                   context.describe());
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
