#include "launch/cpu_binding.h"

#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace dagr::launch_detail {

std::vector<cpu_set_t> worker_cpus(int workers, int per_worker) {
  if (workers < 1 || per_worker < 1) return {};
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return {};
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (static_cast<long>(cpus.size()) < static_cast<long>(workers) * per_worker) return {};
  std::vector<cpu_set_t> out(static_cast<std::size_t>(workers));
  for (int r = 0; r < workers; ++r) {
    CPU_ZERO(&out[static_cast<std::size_t>(r)]);
    for (int k = 0; k < per_worker; ++k) CPU_SET(cpus[static_cast<std::size_t>(r * per_worker + k)], &out[static_cast<std::size_t>(r)]);
  }
  return out;
}

int allowed_cpus() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
  return std::max(1, CPU_COUNT(&allowed));
}

// A thread that an unbound thread starts while the walk is under way may be
// missed (it inherits its starter's mask), so walk again until a walk finds
// every thread bound already (a few walks at most).
void bind_process(pid_t pid, const cpu_set_t& cpus) {
  const std::string tasks = pid == 0 ? "/proc/self/task" : "/proc/" + std::to_string(pid) + "/task";
  for (int walk = 0; walk < 8; ++walk) {
    DIR* dir = opendir(tasks.c_str());
    if (!dir) return;  // the process has exited
    bool changed = false;
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      const auto tid = static_cast<pid_t>(std::atoi(e->d_name));
      cpu_set_t now;
      CPU_ZERO(&now);
      if (sched_getaffinity(tid, sizeof now, &now) == 0 && CPU_EQUAL(&now, &cpus)) continue;
      sched_setaffinity(tid, sizeof cpus, &cpus);
      changed = true;
    }
    closedir(dir);
    if (!changed) return;
  }
}

}  // namespace dagr::launch_detail
