// The errors dagr raises, one small hierarchy, and the checks that raise them.
//
//   Error            anything dagr reports
//   ├─ InputError    the caller's input is wrong (a bad flag, a malformed file, sizes that do not fit)
//   ├─ TimeoutError  a bounded wait ran out
//   ├─ PeerError     another rank died or left while this one waited for it
//   └─ MismatchError ranks called different collectives (op, dtype, count, root or order)
//
// Library code throws; only the CLI turns an error into a message and an exit status.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dagr {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class InputError : public Error {
 public:
  using Error::Error;
};
class TimeoutError : public Error {
 public:
  using Error::Error;
};
class PeerError : public Error {
 public:
  using Error::Error;
};
class MismatchError : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Builds a message from any streamable pieces: concat("rank ", 3, " of ", 4).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
[[noreturn]] void throw_errno(const std::string& what);  // Error with strerror(errno)
}  // namespace detail

}  // namespace dagr

// DAGR_ENFORCE(cond, ErrorType, message parts...): throws ErrorType unless cond holds.
#define DAGR_ENFORCE(cond, ErrorType, ...)                      \
  do {                                                          \
    if (!(cond)) throw ErrorType(::dagr::detail::concat(__VA_ARGS__)); \
  } while (0)

// DAGR_ENFORCE_EQ(a, b, ErrorType, context...): throws naming both values when a != b.
#define DAGR_ENFORCE_EQ(a, b, ErrorType, ...)                                    \
  do {                                                                           \
    const auto& dagr_a_ = (a);                                                   \
    const auto& dagr_b_ = (b);                                                   \
    if (!(dagr_a_ == dagr_b_))                                                   \
      throw ErrorType(::dagr::detail::concat(__VA_ARGS__, ": " #a " = ", dagr_a_, \
                                             " but " #b " = ", dagr_b_));        \
  } while (0)
