#!/usr/bin/env bash
# The torch-free core (dagr_comm, dagr_launch) and its tests built with
# AddressSanitizer + UndefinedBehaviorSanitizer in a build tree of their own
# (DAGR_WITH_TORCH=OFF, no MPI), then run: the thread and process suites, a
# short launcher run and the mismatch fuzzer. Any report ends the program
# that made it with a non-zero status (no recovery), so it fails here.
# Usage: sanitize_tests.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
if [ $# -ne 2 ]; then echo "usage: sanitize_tests.sh SOURCE_DIR BUILD_DIR" >&2; exit 2; fi
src=$1 build=$2
source "$(dirname "$0")/testlib.sh"

flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
start=$(date +%s)
if ! cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDAGR_WITH_TORCH=OFF \
     -DDAGR_SANITIZER_TEST=OFF -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON "-DCMAKE_CXX_FLAGS=$flags" \
     "${launcher[@]}" > "$tmp/log" 2>&1 ||
   ! cmake --build "$build" -j "$(nproc)" --target comm_thread_tests comm_process_tests comm_worker \
     launch_core_tests mismatch_fuzz > "$tmp/log" 2>&1; then
  tail -40 "$tmp/log"
  echo "FAIL building the core with sanitizers"
  exit 1
fi
echo "built the core with ASan + UBSan in $(( $(date +%s) - start )) s"

# Halt at the first report. Forked ranks that end in _exit are not leak-checked;
# the launcher's workers (comm_worker) are.
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
run() {  # NAME COMMAND...: runs it with a bound, shows its output when it fails
  local name=$1; shift
  local t0; t0=$(date +%s)
  if timeout 600 "$@" > "$tmp/out" 2>&1; then
    ok "$name ($(( $(date +%s) - t0 )) s)"
  else
    grep -E "ERROR: AddressSanitizer|runtime error|ERROR: LeakSanitizer|FAILED|HANG" -A 30 "$tmp/out" | head -80
    tail -5 "$tmp/out"
    fail "$name ($(( $(date +%s) - t0 )) s)"
  fi
}
run "thread tests under ASan + UBSan" "$build/tests/comm_thread_tests"
run "process tests under ASan + UBSan" "$build/tests/comm_process_tests"
run "launcher run under ASan + UBSan" "$build/tests/launch_core_tests"
run "mismatch fuzzer under ASan + UBSan" "$build/tests/mismatch_fuzz" --trials 100
grep -h "mismatch_fuzz: seed\|trials in" "$tmp/out"
finish
