// SHA-256 (FIPS 180-4), for the one place comm needs a hash: the job secret's
// tag in a segment header (job_secret.h). Small and dependency-free, so that
// comm stays standard library and POSIX only.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace dagr::detail {

using Sha256Digest = std::array<std::uint8_t, 32>;

Sha256Digest sha256(std::string_view data);

}  // namespace dagr::detail
