#include "dagr/data/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <memory>

#include "dagr/error.h"
#include "huge_pages.h"

namespace dagr::data {

IdxArray read_idx(const std::string& path) {
  // gzread reads plain files as they are, so one path serves both.
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  DAGR_ENFORCE(file, InputError, path, ": cannot open (does the file exist?)");
  auto read = [&](void* into, std::size_t n) -> std::size_t {
    std::size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1u << 30));
      const int r = gzread(file.get(), static_cast<char*>(into) + got, chunk);
      DAGR_ENFORCE(r >= 0, InputError, path, ": not a readable gzip or IDX file");
      if (r == 0) break;
      got += static_cast<std::size_t>(r);
    }
    return got;
  };

  std::uint8_t magic[4];
  DAGR_ENFORCE(read(magic, 4) == 4, InputError, path, ": too short for an IDX header");
  DAGR_ENFORCE(magic[0] == 0 && magic[1] == 0, InputError, path, ": wrong magic (not an IDX file)");
  DAGR_ENFORCE(magic[2] == 0x08, InputError, path, ": IDX element type 0x", std::hex, int(magic[2]),
               " is not unsigned byte (0x08)");
  const int ndims = magic[3];
  DAGR_ENFORCE(ndims >= 1 && ndims <= 4, InputError, path, ": ", ndims, " dimensions (expected 1 to 4)");

  IdxArray out;
  std::size_t total = 1;
  for (int d = 0; d < ndims; ++d) {
    std::uint8_t b[4];
    DAGR_ENFORCE(read(b, 4) == 4, InputError, path, ": truncated in the header");
    const std::uint32_t dim = (std::uint32_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    DAGR_ENFORCE(dim > 0 && dim <= (1u << 28), InputError, path, ": dimension ", d, " is ", dim);
    out.dims.push_back(dim);
    total *= dim;
    DAGR_ENFORCE(total <= (std::size_t{1} << 34), InputError, path, ": dimensions too large");
  }

  // The header is a claim, not a size to allocate. A plain regular file's body size is known from the
  // file system, so a claim it cannot hold fails here, before any allocation, and a claim it can hold is
  // read in one piece. A gzip file's size is known only by decompressing it (its ISIZE trailer is modulo
  // 2^32 and can lie), a pipe's only by reading it: their body is read in pieces that start at 1 MiB and
  // double up to the claim, so memory follows the bytes that really arrive, never the claim.
  const std::size_t header_bytes = 4 + 4 * static_cast<std::size_t>(ndims);
  std::size_t piece = std::min<std::size_t>(total, std::size_t{1} << 20);
  struct stat st {};
  if (gzdirect(file.get()) && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    const std::size_t size = static_cast<std::size_t>(st.st_size);
    const std::size_t body = size > header_bytes ? size - header_bytes : 0;
    DAGR_ENFORCE(body >= total, InputError, path, ": truncated: the header promises ", total,
                 " data bytes but the file holds ", body);
    DAGR_ENFORCE(body == total, InputError, path, ": wrong size: the header promises ", total,
                 " data bytes but the file holds ", body);
    piece = total;
  }
  std::size_t got = 0;
  for (;;) {
    out.data.reserve(piece);  // exactly this much: resize alone may double past the claim
    advise_huge_pages(out.data.data(), piece);
    out.data.resize(piece);
    got += read(out.data.data() + got, piece - got);
    if (got < piece || piece == total) break;
    piece = std::min(total, 2 * piece);
  }
  DAGR_ENFORCE(got == total, InputError, path, ": truncated: the header promises ", total,
               " data bytes but the file holds ", got);
  std::uint8_t extra;
  DAGR_ENFORCE(read(&extra, 1) == 0, InputError, path, ": wrong size: more data than the header's ",
               total, " bytes");
  return out;
}

}  // namespace dagr::data
