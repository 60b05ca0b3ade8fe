// The communication timeout a worker takes from its environment, readable by
// the launcher too: it checks the value before starting any worker, so a bad
// one is the job's error, not a rank's.
#pragma once

#include <chrono>

namespace dagr::detail {

// DAGR_TIMEOUT_S in seconds, 5 minutes when unset; InputError when it is set
// but not a whole number in [1, 604800].
std::chrono::milliseconds timeout_from_env();

}  // namespace dagr::detail
