// Runs a communicator's calls in issue order: async ones on a background
// thread, blocking ones on the caller's thread once the queue ahead is empty.
#pragma once

#include <atomic>
#include <cstdint>
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

// Threads of this process blocked in Work::wait (or in a blocking call
// waiting for the async calls ahead of it). While there are any, the
// background thread's calls are what they wait for: the cores it shares with
// them are idle, so its waits may spin as a caller's would (shm/waiter.h).
bool foreground_waiting();

// A background wait that sleeps registers how to wake it for as long as it
// sleeps; a caller that starts to wait wakes every registered one, which then
// finds foreground_waiting() and spins (shm/waiter.cc).
class BackgroundSleep {
 public:
  BackgroundSleep(void (*wake)(void*), void* arg);
  ~BackgroundSleep();
  BackgroundSleep(const BackgroundSleep&) = delete;
  BackgroundSleep& operator=(const BackgroundSleep&) = delete;

 private:
  void (*wake_)(void*);
  void* arg_;
};

// How many sleeping background waits callers have woken so far (tests).
std::uint64_t background_wakes();

// Counts its thread as blocked in Work::wait while it lives.
class ForegroundWait {
 public:
  ForegroundWait();
  ~ForegroundWait();
  ForegroundWait(const ForegroundWait&) = delete;
  ForegroundWait& operator=(const ForegroundWait&) = delete;
};

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
