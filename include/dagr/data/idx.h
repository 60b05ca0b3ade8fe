// Reading IDX files (the MNIST / Fashion-MNIST format), gzipped or not.
//
// Layout: 2 zero bytes, a type byte (0x08 = unsigned byte), the number of
// dimensions, each dimension as a big-endian uint32, then the data. Anything
// else — a missing file, a wrong magic, a truncated or overlong body — is an
// InputError naming the file and what is wrong. Memory follows what the file
// holds, not what its header claims: a header that promises more bytes than
// the file (decompressed) holds is an InputError naming both sizes, never an
// allocation of the promised size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dagr::data {

struct IdxArray {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> data;  // product(dims) bytes, row-major
};

IdxArray read_idx(const std::string& path);

}  // namespace dagr::data
