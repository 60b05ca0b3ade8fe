#include "launch/failure_cause.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <map>
#include <set>
#include <sstream>

namespace dagr::launch_detail {

bool parse_fault_report(const std::string& line, FaultReport& out) {
  std::istringstream in(line);
  std::string tag, blamed;
  long reporter = 0;
  if (!(in >> tag >> out.kind >> reporter >> blamed) || tag != "dagr-fault") return false;
  if (out.kind != "dead" && out.kind != "left" && out.kind != "silent") return false;
  out.reporter = static_cast<pid_t>(reporter);
  try {
    if (blamed.rfind("rank=", 0) == 0)
      out.blamed_rank = std::stoi(blamed.substr(5));
    else
      out.blamed = static_cast<pid_t>(std::stol(blamed));
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

bool failed(int status) { return !WIFEXITED(status) || WEXITSTATUS(status) != 0; }

std::string describe_status(int status) {
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

std::string describe_exit(int rank, int status) { return fmt::format("rank {} {}", rank, describe_status(status)); }

namespace {

int rank_of(const std::vector<pid_t>& pids, pid_t pid) {
  const auto it = std::find(pids.begin(), pids.end(), pid);
  return it == pids.end() ? -1 : static_cast<int>(it - pids.begin());
}

std::string rank_list(const std::set<int>& ranks) {
  std::string out;
  for (int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return (ranks.size() == 1 ? "rank " : "ranks ") + out;
}

}  // namespace

std::string failure_cause(const std::vector<pid_t>& pids, const std::vector<WorkerExit>& exits,
                          const std::vector<FaultReport>& reports) {
  std::set<pid_t> reporters;
  for (const FaultReport& f : reports) reporters.insert(f.reporter);

  // 1. The earliest rank that failed by itself.
  const WorkerExit* first_failure = nullptr;
  for (const WorkerExit& e : exits) {
    if (!failed(e.status)) continue;
    if (!first_failure) first_failure = &e;
    if (!e.after_stop && !reporters.count(e.pid)) return describe_exit(e.rank, e.status);
  }

  // 2. The rank the reports name most (ties: the lowest rank).
  std::map<int, std::set<int>> witnesses;  // blamed rank → reporting ranks
  std::map<int, std::string> kind;
  for (const FaultReport& f : reports) {
    const int blamed = f.blamed_rank >= 0 ? f.blamed_rank : rank_of(pids, f.blamed);
    const int reporter = rank_of(pids, f.reporter);
    if (blamed < 0 || blamed >= static_cast<int>(pids.size()) || reporter < 0 || blamed == reporter) continue;
    witnesses[blamed].insert(reporter);
    kind[blamed] = f.kind;
  }
  // A rank that itself reported is a link in a chain (rank 2 waited for rank
  // 0, which waited for the stopped rank 1): the cause is at the chain's end,
  // a rank that was blamed and reported nothing.
  std::set<int> reporting;
  for (const auto& [rank, seen_by] : witnesses) reporting.insert(seen_by.begin(), seen_by.end());
  int cause = -1;
  for (bool allow_reporters : {false, true}) {
    for (const auto& [rank, seen_by] : witnesses)
      if ((allow_reporters || !reporting.count(rank)) && (cause < 0 || seen_by.size() > witnesses[cause].size()))
        cause = rank;
    if (cause >= 0) break;
  }
  if (cause >= 0) {
    reporting.erase(cause);
    const std::string who = rank_list(reporting);
    if (kind[cause] == "silent")
      return fmt::format("rank {} stopped responding: {} timed out waiting", cause, who);
    if (kind[cause] == "left")
      return fmt::format("rank {} left the group early: {} still waited for it", cause, who);
    return fmt::format("rank {} died: {} saw it", cause, who);
  }

  // 3. The first failure seen.
  return first_failure ? describe_exit(first_failure->rank, first_failure->status) : std::string();
}

}  // namespace dagr::launch_detail
