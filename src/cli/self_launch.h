// Commands that start their own workers (`dagr bench -n 4`, `dagr train --workers 4`)
// re-run this same command line as N workers under the launcher.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace dagr::cli {

// When this process is not already a worker of a job (no WORLD_SIZE) and
// `workers` > 1: runs `argv` as that many workers and returns the job's exit
// status. Otherwise nullopt: the caller is a worker and goes on.
std::optional<int> run_as_workers(int workers, const std::vector<std::string>& argv);

}  // namespace dagr::cli
