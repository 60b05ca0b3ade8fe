#include <dirent.h>
#include <sys/mman.h>

#include <cstdio>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "comm/job_secret.h"
#include "dagr/error.h"
#include "dagr/launch/launcher.h"

namespace dagr {

std::string fresh_job_id() {
  std::random_device device;  // /dev/urandom
  std::uint64_t bits = (static_cast<std::uint64_t>(device()) << 32) | device();
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(bits));
  return text;
}

std::string fresh_job_secret() {
  unsigned char bytes[32];
  detail::fill_random(bytes, sizeof bytes);
  std::string text;
  for (unsigned char b : bytes) text += fmt::format("{:02x}", b);
  return text;
}

int remove_job_shared_memory(const std::string& job_id) {
  const std::string prefix = "dagr-" + job_id;
  DIR* dir = opendir("/dev/shm");
  if (!dir) return 0;
  int removed = 0;
  while (const dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    // The job's own segment, or a sub-group's: "dagr-<job>" or "dagr-<job>.<group>".
    if (name == prefix || name.rfind(prefix + ".", 0) == 0)
      if (shm_unlink(("/" + name).c_str()) == 0) ++removed;
  }
  closedir(dir);
  return removed;
}

}  // namespace dagr
