#include "self_launch.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "dagr/error.h"
#include "dagr/launch/launcher.h"

namespace dagr::cli {
namespace {
bool is_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v;
}
}  // namespace

std::string job_launcher() {
  if (is_set("WORLD_SIZE")) return "dagr launch";
  if (is_set("OMPI_COMM_WORLD_SIZE")) return "Open MPI";
  if (is_set("PMI_SIZE") || is_set("PMI_RANK")) return "PMI";
  if (is_set("PMIX_RANK")) return "PMIx";
  if (is_set("SLURM_PROCID") && is_set("SLURM_STEP_ID")) return "Slurm";
  return "";
}

std::optional<int> run_as_workers(int workers, const std::vector<std::string>& argv,
                                  const LaunchOptions& recovery) {
  const std::string launcher = job_launcher();
  if (launcher == "Slurm") {
    const char* tasks = std::getenv("SLURM_STEP_NUM_TASKS");
    if (!tasks) tasks = std::getenv("SLURM_NTASKS");
    DAGR_ENFORCE(!tasks || std::atoi(tasks) <= 1, InputError, "srun started ", tasks,
                 " tasks without an MPI process-management interface, so each would run alone: "
                 "use srun --mpi=pmix (or pmi2)");
  }
  if (workers <= 1 || !launcher.empty()) return std::nullopt;
  // The workers measure their start-up from here (e.g. time to the first step).
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  setenv("DAGR_START_NS", std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()).c_str(), 1);
  LaunchOptions options = recovery;
  options.workers = workers;
  options.command = argv;
  options.command[0] = "/proc/self/exe";
  options.tag_output = false;  // the workers' lines already say who they are
  options.on_restart = [](const RestartEvent& e) { std::fprintf(stderr, "dagr: %s\n", describe(e).c_str()); };
  options.on_lost = [](const std::string& what) { std::fprintf(stderr, "dagr: %s\n", what.c_str()); };
  const LaunchResult result = launch(options);
  if (!result.failure.empty()) std::fprintf(stderr, "dagr: %s\n", result.failure.c_str());
  return result.exit_code;
}

}  // namespace dagr::cli
