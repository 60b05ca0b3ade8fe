// Functions compiled once per instruction set, the loader picking the widest
// the CPU has (GCC's function multiversioning, an ifunc):
//   DAGR_TARGET_CLONES("arch=x86-64-v4", "avx2", "default") on one definition,
//   or DAGR_TARGET_DEFAULT on the plain version of a function whose other
//   versions, written by hand, stand inside #if DAGR_MULTIVERSIONING.
// ThreadSanitizer instruments an ifunc's resolver, which the loader runs
// before the sanitizer's runtime is up, and the program crashes while it
// loads: under it, there is only the default version.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define DAGR_MULTIVERSIONING 0
#define DAGR_TARGET_CLONES(...)
#define DAGR_TARGET_DEFAULT
#else
#define DAGR_MULTIVERSIONING 1
#define DAGR_TARGET_CLONES(...) __attribute__((target_clones(__VA_ARGS__)))
#define DAGR_TARGET_DEFAULT __attribute__((target("default")))
#endif
