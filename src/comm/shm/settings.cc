#include "shm/settings.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "dagr/error.h"

namespace dagr::detail {
namespace {

std::uint32_t read_setting(const char* name, std::uint32_t fallback, std::uint32_t min,
                           std::uint32_t max) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  DAGR_ENFORCE(*end == '\0' && v >= min && v <= max, InputError, "environment variable ", name,
               "='", text, "' is not a whole number in [", min, ", ", max, "]");
  return static_cast<std::uint32_t>(v);
}

// The CPUs the job's local ranks share: DAGR_JOB_CPUS where dagr's launcher
// says (it may have bound each rank to CPUs of its own, so a rank's own
// affinity would count only those), else this process's affinity.
int cores_available() {
  if (const char* job = std::getenv("DAGR_JOB_CPUS")) {
    const int n = std::atoi(job);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

// Send/recv rings exist for every ordered pair, so their memory grows as P²:
// by default they share a budget of 16 MiB, each between 16 and 256 KiB.
std::uint32_t default_channel_bytes(int ranks) {
  constexpr std::uint64_t kBudget = 16u << 20, kMin = 16u << 10, kMax = 256u << 10;
  const auto pairs = static_cast<std::uint64_t>(ranks) * static_cast<std::uint64_t>(ranks);
  const std::uint64_t share = kBudget / pairs / 4096 * 4096;
  return static_cast<std::uint32_t>(std::clamp(share, kMin, kMax));
}

}  // namespace

ShmGeometry geometry_from_env(int ranks) {
  return ShmGeometry{
      .small_max_bytes = read_setting("DAGR_SHM_SMALL_MAX", 64u << 10, 0, 1u << 20),
      .small_read_bytes = read_setting("DAGR_SHM_SMALL_READ", 128u << 10, 0, 1u << 30),
      .segment_bytes = read_setting("DAGR_SHM_SEGMENT", 256u << 10, 4u << 10, 64u << 20),
      .buffers = read_setting("DAGR_SHM_BUFFERS", 4, 2, 64),
      .channel_bytes = read_setting("DAGR_SHM_CHANNEL", default_channel_bytes(ranks), 4u << 10, 64u << 20),
  };
}

// With more ranks than cores a spinning rank holds the core its peer needs:
// then spin only briefly and hand the core over with sched_yield early.
WaitPolicy wait_policy_from_env(int local_ranks) {
  const bool oversubscribed = local_ranks > cores_available();
  return WaitPolicy{
      .spin_us = read_setting("DAGR_SPIN_US", oversubscribed ? 0 : 100, 0, 10'000'000),
      .yield_us = read_setting("DAGR_YIELD_US", 5'000, 0, 10'000'000),
  };
}

}  // namespace dagr::detail
