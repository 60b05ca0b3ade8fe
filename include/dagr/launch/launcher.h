// Starting N worker processes on this machine and watching them (as torchrun does).
//
// Each worker gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, dagr's own
// DAGR_JOB_ID (which names the job's shared memory), DAGR_RESTART_COUNT (and
// torchrun's TORCHELASTIC_RESTART_COUNT), DAGR_FAULT_FD, the pipe on which
// dagr reports whom a PeerError or TimeoutError is about, DAGR_JOB_CPUS, the
// number of CPUs the launcher may use (which its workers share), and DAGR_SECRET_FD,
// a pipe holding the job's secret (fresh for each job; without it a process
// is refused by the job's shared-memory groups, see job_secret.h in comm). Output lines can be
// prefixed with the rank. Ctrl-C / SIGTERM are forwarded.
//
// When a worker fails (non-zero exit or a signal) the others get a moment to
// fail on their own and say why, then are stopped; the failure is one line
// naming the cause: a rank that died or failed by itself, or else the rank the
// others' errors name as dead or silent (see failure_cause.h). With
// max_restarts > 0 the whole group is then started again, up to that many
// times (from spares started ahead, with `standby`: standby.h). In elastic
// mode the others carry on instead while at least min_workers are left (once
// the whole group has joined). Afterwards any shared memory of the job left in
// /dev/shm is removed. With cores_per_worker, each rank is bound to CPUs of its own.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dagr {

struct RestartEvent {
  int restart = 0;                      // 1 for the first restart
  int max_restarts = 0;
  std::string failure;                  // the cause, as in LaunchResult::failure
  std::chrono::milliseconds stop_time;  // from the first failure to the whole group stopped
  std::chrono::milliseconds recovery;   // from the first failure to the new group started
};

struct LaunchOptions {
  int workers = 1;
  std::vector<std::string> command;                  // program and its arguments
  std::optional<std::chrono::seconds> comm_timeout;  // handed to workers as DAGR_TIMEOUT_S
  bool tag_output = true;                            // prefix each line with "[rank] "
  std::string job_id;                                // empty: a fresh random one
  int max_restarts = 0;                              // start the group again after a failure, this often
  // After the first failure, the others may fail on their own (and print why)
  // for this long; then SIGTERM, then SIGKILL after `grace`.
  std::chrono::milliseconds settle = std::chrono::seconds(2);
  std::chrono::milliseconds grace = std::chrono::seconds(3);
  std::function<void(const RestartEvent&)> on_restart;  // told before each restart
  // Elastic: a failed worker does not stop the others (they shrink their group
  // and carry on, see Communicator::shrink); a worker the others report silent
  // is killed so that they can; only when fewer than `min_workers` others are
  // left (running, or finished with status 0), or when a worker is lost before
  // every worker has joined the group (the others cannot shrink a group that
  // never formed), is it a failure of the group (stopped, and restarted while
  // restarts are left).
  bool elastic = false;
  int min_workers = 1;
  std::function<void(const std::string&)> on_lost;  // told of each worker lost in elastic mode
  // With max_restarts > 0: keep a spare group started ahead, so that a restart
  // does not wait for the workers' start-up. Only for programs that call
  // wait_until_started() (standby.h).
  bool standby = false;
  // > 0: rank r runs on CPUs of its own, this many, from the (r·k)-th of those
  // the launcher may use (as mpirun's --bind-to core); nothing is bound when
  // there are fewer than workers × k of them. 0: unbound.
  int cores_per_worker = 0;
};

struct LaunchResult {
  int exit_code = 0;    // 0 when every worker exited 0
  std::string failure;  // "rank 2 was killed by signal 9 (Killed)"; empty on success
  int restarts = 0;     // how many times the group was started again
  std::vector<std::string> lost;  // elastic: the workers lost while the others carried on
};

// "restart 1 of 3 after rank 1 was killed by signal 9 (Killed): group stopped in 0.01 s, restarted 0.02 s after the failure"
std::string describe(const RestartEvent& event);

// Runs the job to its end. Throws InputError/Error when it cannot start.
LaunchResult launch(const LaunchOptions& options);

// 16 random hex digits.
std::string fresh_job_id();

// 64 random hex digits (32 bytes from getrandom): a job's secret.
std::string fresh_job_secret();

// Removes /dev/shm/dagr-<job>* left behind by a job; returns how many.
int remove_job_shared_memory(const std::string& job_id);

}  // namespace dagr
