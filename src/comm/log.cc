#include "log.h"

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <cstring>
#include <strings.h>

#include "dagr/error.h"

namespace dagr::log {
namespace {

// One logger of our own, not in spdlog's registry, so a program that uses
// spdlog itself keeps its default logger and its names. Never destroyed:
// lines written while statics are torn down still have somewhere to go.
spdlog::logger& logger() {
  static auto* l = [] {
    auto* made = new spdlog::logger("dagr", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    made->set_level(spdlog::level::trace);  // the threshold in log.h decides
    made->set_pattern("[%H:%M:%S.%f] dagr pid %P %l: %v");
    return made;
  }();
  return *l;
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::trace: return spdlog::level::trace;
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
    case Level::off: break;
  }
  return spdlog::level::off;
}

constexpr const char* kNames[] = {"trace", "debug", "info", "warn", "error", "off"};

}  // namespace

void detail::write(Level level, std::string_view message) { logger().log(to_spdlog(level), "{}", message); }

void configure_from_env() {
  const char* text = std::getenv("DAGR_LOG_LEVEL");
  int level = static_cast<int>(Level::warn);
  if (text && *text) {
    level = -1;
    for (int i = 0; i < 6; ++i)
      if (strcasecmp(text, kNames[i]) == 0) level = i;
    if (strcasecmp(text, "warning") == 0) level = static_cast<int>(Level::warn);
    DAGR_ENFORCE(level >= 0, InputError, "DAGR_LOG_LEVEL='", text,
                 "' is not one of off, error, warn, info, debug, trace");
  }
  ::dagr::log::detail::threshold.store(level, std::memory_order_relaxed);
  for (const char* name : {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* r = std::getenv(name); r && *r) {
      char* end = nullptr;
      const long v = std::strtol(r, &end, 10);
      if (*end == '\0' && v >= 0) set_rank(static_cast<int>(v));
      break;
    }
}

void set_rank(int rank) { logger().set_pattern(fmt::format("[%H:%M:%S.%f] dagr rank {} pid %P %l: %v", rank)); }

void set_role(std::string_view role) {
  logger().set_pattern(fmt::format("[%H:%M:%S.%f] dagr {} pid %P %l: %v", role));
}

std::string_view version() { return DAGR_VERSION; }

}  // namespace dagr::log
