#include "dagr/data/idx_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "dagr/error.h"

namespace dagr::data {
namespace {

namespace fs = std::filesystem;

std::string cache_folder() {
  if (const char* dir = std::getenv("DAGR_CACHE_DIR")) return dir;  // "" turns the cache off
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/dagr";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/dagr";
  return "";
}

bool gzipped(const std::string& path) {
  unsigned char magic[2] = {0, 0};
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  const bool two = std::fread(magic, 1, 2, f) == 2;
  std::fclose(f);
  return two && magic[0] == 0x1f && magic[1] == 0x8b;
}

// FNV-1a, 64 bits: a name, not a defence (the folder is the user's own).
void mix(std::uint64_t& h, const void* data, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<const unsigned char*>(data)[i];
    h *= 0x100000001b3ull;
  }
}

// The copy in the IDX format: type 0x08, the dimensions big-endian, the bytes.
void write_copy(const std::string& copy, const IdxArray& array) {
  std::error_code ec;
  fs::create_directories(fs::path(copy).parent_path(), ec);
  if (ec) return;
  const std::string temporary = copy + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    const char magic[4] = {0, 0, 0x08, static_cast<char>(array.dims.size())};
    out.write(magic, 4);
    for (std::int64_t d : array.dims) {
      const auto v = static_cast<std::uint32_t>(d);
      const char be[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                          static_cast<char>(v)};
      out.write(be, 4);
    }
    out.write(reinterpret_cast<const char*>(array.data.data()), static_cast<std::streamsize>(array.data.size()));
    out.close();
    if (!out) {
      fs::remove(temporary, ec);
      return;
    }
  }
  fs::rename(temporary, copy, ec);
  if (ec) fs::remove(temporary, ec);
}

}  // namespace

std::string idx_cache_path(const std::string& path) {
  const std::string folder = cache_folder();
  struct stat st {};
  if (folder.empty() || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !gzipped(path)) return "";
  std::error_code ec;
  const std::string absolute = fs::absolute(path, ec).string();
  std::uint64_t h = 0xcbf29ce484222325ull;
  mix(h, absolute.data(), absolute.size());
  for (const std::int64_t v : {std::int64_t(st.st_dev), std::int64_t(st.st_ino), std::int64_t(st.st_size),
                               std::int64_t(st.st_mtim.tv_sec), std::int64_t(st.st_mtim.tv_nsec)})
    mix(h, &v, sizeof v);
  std::string name = fs::path(path).filename().string();
  if (name.size() > 3 && name.ends_with(".gz")) name.resize(name.size() - 3);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return folder + "/" + name + "." + hex;
}

IdxArray read_idx_cached(const std::string& path) {
  const std::string copy = idx_cache_path(path);
  if (copy.empty()) return read_idx(path);
  if (std::error_code ec; fs::exists(copy, ec)) {
    try {
      return read_idx(copy);
    } catch (const InputError&) {
      // Not a copy we would have written: read the source and write it again.
    }
  }
  IdxArray array = read_idx(path);
  write_copy(copy, array);
  return array;
}

}  // namespace dagr::data
