#include "fault_report.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace dagr::detail {
namespace {

// The fault pipe from the environment, or -1 (unset, malformed, or not a pipe:
// never write into a descriptor that merely has the right number).
int fault_fd() {
  const char* text = std::getenv("DAGR_FAULT_FD");
  if (!text || !*text) return -1;
  char* end = nullptr;
  const long fd = std::strtol(text, &end, 10);
  if (*end != '\0' || fd < 0 || fd > 1 << 20) return -1;
  struct stat st {};
  if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISFIFO(st.st_mode)) return -1;
  return static_cast<int>(fd);
}

const char* name(FaultKind kind) {
  switch (kind) {
    case FaultKind::dead: return "dead";
    case FaultKind::left: return "left";
    case FaultKind::silent: return "silent";
  }
  return "?";
}

void write_line(const char* line, int n) {
  static const int fd = fault_fd();
  if (fd >= 0 && n > 0) [[maybe_unused]] auto written = write(fd, line, static_cast<std::size_t>(n));
}

}  // namespace

void report_fault(FaultKind kind, int blamed_pid) {
  if (blamed_pid <= 0) return;
  char line[96];
  write_line(line, std::snprintf(line, sizeof line, "dagr-fault %s %d %d\n", name(kind), static_cast<int>(getpid()),
                                 blamed_pid));
}

void report_absent(int world_rank) {
  char line[96];
  write_line(line, std::snprintf(line, sizeof line, "dagr-fault silent %d rank=%d\n", static_cast<int>(getpid()),
                                 world_rank));
}

void report_joined() {
  char line[48];
  write_line(line, std::snprintf(line, sizeof line, "dagr-joined %d\n", static_cast<int>(getpid())));
}

}  // namespace dagr::detail
