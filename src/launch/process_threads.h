// Doing something to every thread of a process (its priority, its CPUs).
#pragma once

#include <sys/types.h>

#include <functional>

namespace dagr::launch_detail {

// Calls f(tid) for every thread of process `pid` (0: this one), walking its
// threads again until a walk in which f changed nothing (f says whether it
// did), a few walks at most: a thread that a not-yet-changed thread starts
// during a walk inherits the old setting, and the next walk catches it. A
// thread that exits meanwhile, or a process that has, is skipped.
void for_each_thread(pid_t pid, const std::function<bool(pid_t tid)>& f);

}  // namespace dagr::launch_detail
