#include "executor.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "work_state.h"

namespace dagr::detail {

namespace {
thread_local bool background_thread = false;
std::atomic<int> foreground_waiters{0};
std::atomic<std::uint64_t> wakes{0};

// The background waits asleep now. A sleeper registers before it looks at
// foreground_waiting() a last time, a caller counts itself before it wakes
// the registered ones: under the mutex one of the two sees the other.
struct Sleepers {
  std::mutex mutex;
  std::vector<std::pair<void (*)(void*), void*>> asleep;
};
Sleepers& sleepers() {
  static auto* s = new Sleepers;  // never destroyed: a background thread may outlive static destruction
  return *s;
}
}  // namespace

bool running_in_background() { return background_thread; }

bool foreground_waiting() { return foreground_waiters.load(std::memory_order_seq_cst) > 0; }

BackgroundSleep::BackgroundSleep(void (*wake)(void*), void* arg) : wake_(wake), arg_(arg) {
  std::lock_guard lock(sleepers().mutex);
  sleepers().asleep.emplace_back(wake, arg);
}

BackgroundSleep::~BackgroundSleep() {
  Sleepers& s = sleepers();
  std::lock_guard lock(s.mutex);
  s.asleep.erase(std::find(s.asleep.begin(), s.asleep.end(), std::make_pair(wake_, arg_)));
}

ForegroundWait::ForegroundWait() {
  foreground_waiters.fetch_add(1, std::memory_order_seq_cst);
  Sleepers& s = sleepers();
  std::lock_guard lock(s.mutex);
  for (auto [wake, arg] : s.asleep) wake(arg);
  wakes.fetch_add(s.asleep.size(), std::memory_order_relaxed);
}

std::uint64_t background_wakes() { return wakes.load(std::memory_order_relaxed); }

ForegroundWait::~ForegroundWait() { foreground_waiters.fetch_sub(1, std::memory_order_seq_cst); }

Executor::~Executor() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Work Executor::submit(std::function<void()> task) {
  auto state = std::make_shared<WorkState>();
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(Item{std::move(task), state});
    outstanding_.fetch_add(1, std::memory_order_relaxed);
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  }
  changed_.notify_all();
  return Work(state);
}

void Executor::run_inline(const std::function<void()>& task) {
  if (outstanding_.load(std::memory_order_acquire) != 0) {
    // Waiting for the calls ahead is waiting for background work, as in
    // Work::wait: counted, so that their waits spin instead of sleeping.
    std::optional<ForegroundWait> idle;
    if (!running_in_background()) idle.emplace();
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }
  task();
}

void Executor::loop() {
  background_thread = true;
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to do
    Item item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    std::exception_ptr error;
    try {
      item.task();
    } catch (...) {
      error = std::current_exception();
    }
    item.state->finish(error);
    lock.lock();
    busy_ = false;
    outstanding_.fetch_sub(1, std::memory_order_release);
    changed_.notify_all();
  }
}

}  // namespace dagr::detail
