// Starting N worker processes on this machine and watching them (as torchrun does).
//
// Each worker gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and dagr's
// own DAGR_JOB_ID (which names the job's shared memory) in its environment.
// Output lines can be prefixed with the rank. Ctrl-C / SIGTERM are forwarded.
// When a worker fails (non-zero exit or a signal) the others are stopped and
// the launch fails with one line naming the rank and the cause. Afterwards any
// shared memory of the job that a killed worker left in /dev/shm is removed.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace dagr {

struct LaunchOptions {
  int workers = 1;
  std::vector<std::string> command;                  // program and its arguments
  std::optional<std::chrono::seconds> comm_timeout;  // handed to workers as DAGR_TIMEOUT_S
  bool tag_output = true;                            // prefix each line with "[rank] "
  std::string job_id;                                // empty: a fresh random one
  std::chrono::milliseconds grace = std::chrono::seconds(3);  // SIGTERM, then SIGKILL after this
};

struct LaunchResult {
  int exit_code = 0;    // 0 when every worker exited 0
  std::string failure;  // "rank 2 was killed by signal 9 (Killed)"; empty on success
};

// Runs the job to its end. Throws InputError/Error when it cannot start.
LaunchResult launch(const LaunchOptions& options);

// 16 random hex digits.
std::string fresh_job_id();

// Removes /dev/shm/dagr-<job>* left behind by a job; returns how many.
int remove_job_shared_memory(const std::string& job_id);

}  // namespace dagr
