#include "launch/process_threads.h"

#include <dirent.h>

#include <cstdlib>
#include <string>

namespace dagr::launch_detail {

void for_each_thread(pid_t pid, const std::function<bool(pid_t tid)>& f) {
  const std::string tasks = pid == 0 ? "/proc/self/task" : "/proc/" + std::to_string(pid) + "/task";
  for (int walk = 0; walk < 8; ++walk) {
    DIR* dir = opendir(tasks.c_str());
    if (!dir) return;  // the process has exited
    bool changed = false;
    while (const dirent* e = readdir(dir))
      if (e->d_name[0] != '.' && f(static_cast<pid_t>(std::atoi(e->d_name)))) changed = true;
    closedir(dir);
    if (!changed) return;
  }
}

}  // namespace dagr::launch_detail
