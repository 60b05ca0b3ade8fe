// Runs a function as every rank of a fresh shared-memory group, one thread per rank.
#pragma once

#include <unistd.h>

#include <atomic>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dagr/comm/communicator.h"

namespace dagr::testing {

inline std::string fresh_job_id() {
  static std::atomic<int> counter{0};
  return "test-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
}

// Calls body(comm) on `size` threads; rethrows the first exception any rank raised.
inline void run_ranks(int size, const std::function<void(Communicator&)>& body,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const std::string job = fresh_job_id();
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        Communicator comm = Communicator::join({.job = job, .rank = r, .size = size, .timeout = timeout});
        body(comm);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace dagr::testing
