#include "blas_core.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

namespace dagr::cli {
namespace {

// OpenBLAS's names of its x86 cores that have no AVX2 kernels.
// (As OpenBLAS 0.3.21's name table spells them; "Unknown" is its name for a CPU it could not place.)
constexpr std::string_view kOldCores[] = {"Unknown",  "Katmai",    "Coppermine",   "Northwood", "Prescott",
                                          "Banias",   "Atom",      "Core2",        "Penryn",    "Dunnington",
                                          "Nehalem",  "Sandybridge", "Athlon",     "Opteron",   "Opteron_SSE3",
                                          "Barcelona", "Nano",     "Bobcat",       "Bulldozer", "Piledriver",
                                          "Steamroller"};

// The best OpenBLAS core this CPU can run, or nullptr if it has no AVX2.
const char* best_core() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  return "Haswell";
#else
  return nullptr;
#endif
}

// The name of the kernels OpenBLAS chose, or nullptr if OpenBLAS is not
// loaded (another BLAS, or a build without libtorch).
const char* openblas_core() {
  using CoreName = char* (*)();
  const auto core_name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return core_name ? core_name() : nullptr;
}

// The file this program's code was loaded from: the mapping in
// /proc/self/maps that holds this function. Not /proc/self/exe, which names
// the dynamic loader when the program was started as `ld.so PROGRAM`. A file
// deleted since (a rebuild while the program started) ends in " (deleted)".
std::string own_file() {
  const auto here = reinterpret_cast<std::uintptr_t>(&own_file);
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    std::uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR, &begin, &end) != 2 || here < begin || here >= end) continue;
    const std::size_t path = line.find('/');
    return path == std::string::npos ? "" : line.substr(path);
  }
  return "";
}

// Starts this program again with the same arguments; returns only if that failed.
void restart(char** argv) {
  const std::string file = own_file();
  constexpr std::string_view kDeleted = " (deleted)";
  if (file.empty()) return;
  if (!file.ends_with(kDeleted)) {
    execv(file.c_str(), argv);  // by its own name, so the process keeps it
    return;
  }
  // Deleted: the kernel still execs it through /proc/self/exe, when that is this program (not ld.so).
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0 && std::string_view(exe, static_cast<std::size_t>(n)) == file) execv("/proc/self/exe", argv);
}

}  // namespace

void use_blas_kernels_for_this_cpu(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) return;  // chosen already: by the user, or by this before the re-exec
  const char* chosen_name = openblas_core();
  if (!chosen_name) return;
  const std::string_view chosen = chosen_name;
  bool old = false;
  for (std::string_view c : kOldCores) old |= chosen == c;
  const char* better = best_core();
  if (!old || !better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  restart(argv);
  // Still running OpenBLAS's choice: say so, and do not pass a variable that does not hold here to the workers.
  unsetenv("OPENBLAS_CORETYPE");
  std::fprintf(stderr, "dagr: warning: could not restart with OPENBLAS_CORETYPE=%s; running OpenBLAS's %s kernels\n",
               better, chosen_name);
}

std::string blas_kernels() {
  const char* core = openblas_core();
  if (!core) return "";
  std::string s = std::string("OpenBLAS ") + core + " kernels";
  if (const char* set = std::getenv("OPENBLAS_CORETYPE")) s += std::string(" (OPENBLAS_CORETYPE=") + set + ")";
  return s;
}

}  // namespace dagr::cli
