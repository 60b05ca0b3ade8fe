// Naming the cause of a failed group, from what the launcher saw.
//
// When rank 1 is killed, its peers raise PeerError within milliseconds and
// exit (or abort) too, and the launcher may reap a survivor first. When rank 1
// is stopped (SIGSTOP), it never exits at all: its peers time out and exit 1.
// Exit order therefore does not name the cause. What does:
//   1. a rank that failed by itself (a signal or an error of its own) before
//      the launcher stopped anyone, and sent no fault report: the earliest such
//      rank is the cause, the rest are consequences;
//   2. otherwise the rank that the fault reports (fault_report.h in comm) name
//      most: the one the others saw die, leave, or go silent — preferring one
//      that reported nobody itself (the end of a chain of waits);
//   3. otherwise the first failure seen.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace dagr::launch_detail {

using Clock = std::chrono::steady_clock;

struct WorkerExit {
  int rank;
  pid_t pid;
  int status;             // from waitpid
  Clock::time_point when;
  bool after_stop;        // reaped after the launcher began stopping the group
};

struct FaultReport {
  std::string kind;  // dead | left | silent
  pid_t reporter;
  pid_t blamed = 0;      // the blamed worker's pid, or
  int blamed_rank = -1;  // its rank, when it never joined ("rank=<r>")
};

// Parses one "dagr-fault <kind> <reporter> <blamed pid | rank=r>" line; false if it is not one.
bool parse_fault_report(const std::string& line, FaultReport& out);

bool failed(int status);
std::string describe_status(int status);          // "was killed by signal 9 (Killed)"
std::string describe_exit(int rank, int status);  // "rank 2 was killed by signal 9 (Killed)"

// The one line for a failed group. `pids` maps rank → pid; `exits` are the
// failed and successful exits seen so far, in the order they were reaped.
std::string failure_cause(const std::vector<pid_t>& pids, const std::vector<WorkerExit>& exits,
                          const std::vector<FaultReport>& reports);

}  // namespace dagr::launch_detail
