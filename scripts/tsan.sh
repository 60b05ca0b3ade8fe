#!/usr/bin/env bash
# ThreadSanitizer over the torch-free core: builds dagr_comm, the thread tests
# and the mismatch fuzzer with -fsanitize=thread (DAGR_WITH_TORCH=OFF, no MPI)
# and runs them with ranks as threads; the first report fails the run.
# Too slow for `make test` on 2 cores (see docs/DECISIONS.md), so run it by hand:
#   scripts/tsan.sh [BUILD_DIR]        (default: build-tsan)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-tsan}
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDAGR_WITH_TORCH=OFF -DDAGR_SANITIZER_TEST=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON "-DCMAKE_CXX_FLAGS=-fsanitize=thread -fno-omit-frame-pointer -Wno-tsan" \
  "${launcher[@]}" > /dev/null || exit 1
cmake --build "$build" -j "$(nproc)" --target comm_thread_tests mismatch_fuzz > /dev/null || exit 1

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
status=0
timeout 3600 "$build/tests/comm_thread_tests" || status=1
timeout 1800 "$build/tests/mismatch_fuzz" --mode threads --trials "${TSAN_FUZZ_TRIALS:-200}" || status=1
if [ "$status" -eq 0 ]; then echo "tsan: no reports"; else echo "tsan: FAILED (see the report above)"; fi
exit "$status"
