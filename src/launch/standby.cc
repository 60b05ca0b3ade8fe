// The worker's side of a standby (standby.h): the launcher writes the worker's
// assignment to the pipe DAGR_STANDBY_FD as "NAME=value\n" lines and closes
// it; end of file with nothing written means "not needed".
#include "dagr/launch/standby.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "dagr/error.h"

namespace dagr {

bool wait_until_started() {
  const char* fd_text = std::getenv("DAGR_STANDBY_FD");
  if (!fd_text) return true;
  char* end = nullptr;
  const long fd = std::strtol(fd_text, &end, 10);
  DAGR_ENFORCE(end != fd_text && *end == '\0' && fd >= 0 && fd <= 1 << 20, InputError,
               "DAGR_STANDBY_FD=", fd_text, " is not a descriptor");
  unsetenv("DAGR_STANDBY_FD");
  // Named so while it waits (ps, pgrep -x dagr-standby); the old name comes back after.
  char name[17] = {};
  prctl(PR_GET_NAME, name);
  prctl(PR_SET_NAME, "dagr-standby");
  std::string message;
  char buf[512];
  for (;;) {
    const ssize_t n = read(static_cast<int>(fd), buf, sizeof buf);
    if (n > 0) {
      message.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      detail::throw_errno("reading the standby descriptor");
    }
  }
  close(static_cast<int>(fd));
  prctl(PR_SET_NAME, name);
  if (message.empty()) return false;
  for (std::size_t at = 0, nl; (nl = message.find('\n', at)) != std::string::npos; at = nl + 1) {
    const std::string line = message.substr(at, nl - at);
    const std::size_t eq = line.find('=');
    DAGR_ENFORCE(eq != std::string::npos && eq > 0, Error, "malformed standby assignment line '", line, "'");
    setenv(line.substr(0, eq).c_str(), line.substr(eq + 1).c_str(), 1);
  }
  return true;
}

}  // namespace dagr
