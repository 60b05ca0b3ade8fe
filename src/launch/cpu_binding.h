// Binding each worker to CPUs of its own (as mpirun's --bind-to core, with
// --map-by slot:PE=k for k CPUs a worker).
//
// Unbound, the scheduler moves a worker's threads between CPUs as the other
// workers' threads wake and sleep, and a worker that waits for its peers at
// every step (a collective) pays for each move in cold caches and a late
// start. On a 2-core machine with 2 workers, binding each to its own core made
// dagr train's MLP 16 % faster (5 interleaved pairs; docs/DECISIONS.md, Launcher).
//
// Worker r gets the CPUs this process may run on (its affinity: a cgroup or a
// taskset around the launcher is respected), k = per_worker of them, from the
// (r·k)-th on, in the order Linux numbers them. Only when there are enough for
// every worker: with fewer CPUs than workers × k nothing is bound, as the
// workers must share anyway.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <vector>

namespace dagr::launch_detail {

// One CPU set per rank; empty when per_worker is 0 or there are too few CPUs.
std::vector<cpu_set_t> worker_cpus(int workers, int per_worker);

// How many CPUs this process may use (its affinity); at least 1. The launcher
// tells its workers (DAGR_JOB_CPUS), so that a bound rank still knows how many
// the job's ranks share.
int allowed_cpus();

// Binds every thread of process `pid` (0: this one) to `cpus`
// (for_each_thread, process_threads.h); threads it starts later inherit the
// binding from the thread that starts them.
void bind_process(pid_t pid, const cpu_set_t& cpus);

}  // namespace dagr::launch_detail
