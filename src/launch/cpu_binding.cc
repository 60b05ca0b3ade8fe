#include "launch/cpu_binding.h"

#include <algorithm>

#include "launch/process_threads.h"

namespace dagr::launch_detail {
namespace {

// The CPUs this process may run on, in Linux's numbering.
std::vector<int> allowed_list() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  return cpus;
}

}  // namespace

std::vector<cpu_set_t> worker_cpus(int workers, int per_worker) {
  if (workers < 1 || per_worker < 1) return {};
  const std::vector<int> cpus = allowed_list();
  if (static_cast<long>(cpus.size()) < static_cast<long>(workers) * per_worker) return {};
  std::vector<cpu_set_t> out(static_cast<std::size_t>(workers));
  for (std::size_t r = 0; r < out.size(); ++r) {
    CPU_ZERO(&out[r]);
    for (std::size_t k = 0; k < static_cast<std::size_t>(per_worker); ++k)
      CPU_SET(cpus[r * static_cast<std::size_t>(per_worker) + k], &out[r]);
  }
  return out;
}

int allowed_cpus() { return std::max(1, static_cast<int>(allowed_list().size())); }

void bind_process(pid_t pid, const cpu_set_t& cpus) {
  for_each_thread(pid, [&](pid_t tid) {
    cpu_set_t now;
    CPU_ZERO(&now);
    if (sched_getaffinity(tid, sizeof now, &now) == 0 && CPU_EQUAL(&now, &cpus)) return false;
    sched_setaffinity(tid, sizeof cpus, &cpus);
    return true;
  });
}

}  // namespace dagr::launch_detail
