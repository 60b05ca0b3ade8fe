#!/usr/bin/env bash
# Thousands of trials of the mismatch fuzzer (tests/mismatch_fuzz.cc), where
# `make test` runs 300: random mismatched collectives on 2..4 ranks, as threads
# and as processes. Builds it first in a torch-free build tree.
#   scripts/fuzz.sh [TRIALS] [--seed S] [--first T] [--mode threads|processes|both]
#   (default 3000 trials, a fresh seed; BUILD_DIR=... picks the tree, default build-fuzz)
# It prints the seed; a failed trial prints the command that replays it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-fuzz}
trials=3000
if [ $# -gt 0 ] && [[ $1 != -* ]]; then trials=$1; shift; fi
if ! [[ $trials =~ ^[0-9]+$ ]]; then echo "fuzz.sh: TRIALS is a number of trials, not '$trials'" >&2; exit 2; fi
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDAGR_WITH_TORCH=OFF -DDAGR_SANITIZER_TEST=OFF \
    "${launcher[@]}" > /dev/null
fi
cmake --build "$build" -j "$(nproc)" --target mismatch_fuzz > /dev/null
exec "$build/tests/mismatch_fuzz" --trials "$trials" "$@"
