// The job's secret: what lets a process into its job's shared-memory groups.
//
// `dagr launch` (and the self-launch of dagr train/bench) makes 32 random
// bytes per job and hands them to each worker and spare on an inherited pipe
// named by DAGR_SECRET_FD, never on the command line or in the environment.
// This process reads that descriptor to its end and closes it when the comm
// library is loaded (a constructor; at the latest on the first join), and
// removes DAGR_SECRET_FD from its environment: the secret is then only in this
// process's memory, and the pipe is empty (another process that reads it
// first leaves this one without a secret, an error at join, never a silent
// wrong one). Any descriptor that reads to end of file works, so ranks
// started by hand can be given one: DAGR_SECRET_FD=3 prog 3<secret-file.
//
// How a group uses it: its rank 0 writes a random salt and
// SHA-256("dagr-join" salt secret) into the segment header, and a joining
// rank compares its own tag before it takes a place (ShmBackend::join). See
// docs/DECISIONS.md for what this does and does not protect against.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dagr::detail {

using AdmissionTag = std::array<std::uint8_t, 32>;  // SHA-256 (libsodium's)

// The secret this process was given; empty when DAGR_SECRET_FD was not set
// (no launcher: mpirun, ranks as threads, ranks started by hand). Throws
// InputError when DAGR_SECRET_FD was set but gave no secret.
const std::string& job_secret();

// The tag a group's header holds for `secret` and `salt`.
AdmissionTag admission_tag(const std::string& secret, const std::array<std::uint8_t, 16>& salt);

// Random bytes from the kernel (getrandom).
void fill_random(void* out, std::size_t bytes);

}  // namespace dagr::detail
