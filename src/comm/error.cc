#include "dagr/error.h"

#include <cerrno>
#include <cstring>

namespace dagr::detail {

void throw_errno(const std::string& what) {
  throw Error(concat(what, ": ", std::strerror(errno)));
}

}  // namespace dagr::detail
