// The shared state behind a Work handle: done flag, error, and a condition to wait on.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>

namespace dagr::detail {

struct WorkState {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::exception_ptr error;

  void finish(std::exception_ptr e) {
    {
      std::lock_guard lock(mutex);
      done = true;
      error = std::move(e);
    }
    done_cv.notify_all();
  }
};

}  // namespace dagr::detail
