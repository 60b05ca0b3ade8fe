#include "self_launch.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <cstdlib>

#include "dagr/launch/launcher.h"

namespace dagr::cli {

std::optional<int> run_as_workers(int workers, const std::vector<std::string>& argv) {
  if (workers <= 1 || std::getenv("WORLD_SIZE")) return std::nullopt;
  // The workers measure their start-up from here (e.g. time to the first step).
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  setenv("DAGR_START_NS", std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()).c_str(), 1);
  LaunchOptions options;
  options.workers = workers;
  options.command = argv;
  options.command[0] = "/proc/self/exe";
  options.tag_output = false;  // the workers' lines already say who they are
  const LaunchResult result = launch(options);
  if (!result.failure.empty()) std::fprintf(stderr, "dagr: %s\n", result.failure.c_str());
  return result.exit_code;
}

}  // namespace dagr::cli
