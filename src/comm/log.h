// dagr's own log lines: what each rank joined, which transport and algorithm a
// collective took and how long it ran, what the launcher did with each worker.
//
// Lines go to stderr through spdlog, as
//   [12:00:00.123456] dagr rank 1 pid 4242 debug: allreduce float32 count=1024 sum: one-step, 4096 B
// The level comes from DAGR_LOG_LEVEL (as NCCL_DEBUG does for NCCL): off, error,
// warn (the default), info (what joined, what the launcher started and reaped),
// debug (one line per collective: its path and its time), trace. It is read by
// configure_from_env(), which the communicator, the launcher and the dagr command
// call when they start.
//
// A disabled line costs one relaxed atomic load and a compare: the DAGR_LOG_*
// macros test the level before they evaluate or format their arguments, so
// they may sit on the collective path.
#pragma once

#include <atomic>
#include <fmt/format.h>
#include <string_view>

namespace dagr::log {

enum class Level : int { trace = 0, debug, info, warn, error, off };

namespace detail {
inline std::atomic<int> threshold{static_cast<int>(Level::warn)};
void write(Level level, std::string_view message);
}  // namespace detail

inline bool enabled(Level level) {
  return static_cast<int>(level) >= detail::threshold.load(std::memory_order_relaxed);
}

// Reads DAGR_LOG_LEVEL (unset or empty: warn) and the process's rank from the
// launcher's environment (RANK, or Open MPI's / PMI's); a value that is not a
// level name → InputError naming the accepted ones.
void configure_from_env();

// The rank in each line's prefix: this process's rank in its world. Lines
// before a rank is known say "dagr pid P" only; the launcher says "dagr launch".
void set_rank(int rank);
void set_role(std::string_view role);

// The version this library was built as (CMake's PROJECT_VERSION).
std::string_view version();

}  // namespace dagr::log

#define DAGR_LOG_AT(level, ...)                                  \
  do {                                                           \
    if (::dagr::log::enabled(level))                             \
      ::dagr::log::detail::write(level, fmt::format(__VA_ARGS__)); \
  } while (0)
#define DAGR_LOG_TRACE(...) DAGR_LOG_AT(::dagr::log::Level::trace, __VA_ARGS__)
#define DAGR_LOG_DEBUG(...) DAGR_LOG_AT(::dagr::log::Level::debug, __VA_ARGS__)
#define DAGR_LOG_INFO(...) DAGR_LOG_AT(::dagr::log::Level::info, __VA_ARGS__)
#define DAGR_LOG_WARN(...) DAGR_LOG_AT(::dagr::log::Level::warn, __VA_ARGS__)
