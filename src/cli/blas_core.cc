#include "blas_core.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace dagr::cli {
namespace {

// OpenBLAS's names of its x86 cores that have no AVX2 kernels.
constexpr std::string_view kOldCores[] = {"Katmai",  "Coppermine", "Northwood", "Prescott",  "Banias",   "Atom",
                                          "Core2",   "Penryn",     "Dunnington", "Nehalem",  "Sandybridge",
                                          "Opteron", "Opteron(SSE3)", "Barcelona", "Nano",  "Bobcat",
                                          "Bulldozer", "Piledriver", "Steamroller"};

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
  char self[4096];  // this program's file, so the process keeps its name (not "exe")
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    execv(self, argv);
  }
  std::fprintf(stderr, "dagr: warning: could not restart with OPENBLAS_CORETYPE=%s (OpenBLAS chose %s kernels)\n",
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
