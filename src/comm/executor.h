// Runs a communicator's calls in issue order: async ones on a background
// thread, blocking ones on the caller's thread once the queue ahead is empty.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "dagr/comm/work.h"

namespace dagr::detail {

struct WorkState;

// True on an Executor's background thread.
bool running_in_background();

class Executor {
 public:
  Executor() = default;
  ~Executor();  // finishes queued calls, then joins
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `task` behind everything issued before; the thread starts on first use.
  Work submit(std::function<void()> task);
  // Waits for the queue to drain, then runs `task` here (no thread hop on the fast path).
  void run_inline(const std::function<void()>& task);

 private:
  struct Item {
    std::function<void()> task;
    std::shared_ptr<WorkState> state;
  };
  void loop();

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Item> queue_;
  bool busy_ = false;  // the thread is running an item
  std::atomic<int> outstanding_{0};  // queued or running: lets run_inline skip the lock when 0
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace dagr::detail
