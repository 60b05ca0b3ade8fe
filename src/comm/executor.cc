#include "executor.h"

#include "work_state.h"

namespace dagr::detail {

namespace {
thread_local bool background_thread = false;
}

bool running_in_background() { return background_thread; }

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
