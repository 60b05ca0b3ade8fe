#!/usr/bin/env bash
# Logs and versions: DAGR_LOG_LEVEL picks what the ranks and the launcher say
# (joined, started, exited; at debug each collective's path and time), a bad
# level is one line and exit 2, `dagr --version`, and --help shows defaults.
# Usage: log_tests.sh DAGR
set -uo pipefail
dagr=$1
source "$(dirname "$0")/testlib.sh"

"$dagr" --version > "$tmp/out" 2>&1
expect "--version names dagr and libtorch" grep -Eq '^dagr [0-9]+\.[0-9]+\.[0-9]+ \(libtorch [0-9.]+' "$tmp/out"

# OpenBLAS's kernels (src/cli/blas_core.h): on a CPU with AVX2 and FMA, never
# one of OpenBLAS's cores without AVX2, which it picks for CPUs it does not
# know; a user's OPENBLAS_CORETYPE is kept, and the processes dagr starts see it.
env -u OPENBLAS_CORETYPE "$dagr" --version > "$tmp/version" 2>&1
kernels=$(sed -n 's/.*OpenBLAS \([^ ]*\) kernels.*/\1/p' "$tmp/version")
chosen=$(sed -n 's/.*(OPENBLAS_CORETYPE=\([^)]*\)).*/\1/p' "$tmp/version")
expect "--version names OpenBLAS's kernels" test -n "$kernels"
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
if [[ $flags == *" avx2 "* && $flags == *" fma "* ]]; then
  old=" Katmai Coppermine Northwood Prescott Banias Atom Core2 Penryn Dunnington Nehalem Sandybridge Opteron Opteron_SSE3 Barcelona Nano Bobcat Bulldozer Piledriver Steamroller Unknown Athlon "
  expect "kernels with AVX2 on a CPU with AVX2 and FMA (not $kernels)" test "${old/ $kernels /}" = "$old"
  OPENBLAS_CORETYPE=Haswell "$dagr" --version > "$tmp/out" 2>&1
  expect "a user's OPENBLAS_CORETYPE is kept" grep -q 'OpenBLAS Haswell kernels' "$tmp/out"
  env -u OPENBLAS_CORETYPE "$dagr" launch -n 1 -- sh -c 'echo "core ${OPENBLAS_CORETYPE:-(as OpenBLAS detects)}"' > "$tmp/out" 2>&1
  expect "workers see the kernels dagr chose" grep -qF "core ${chosen:-(as OpenBLAS detects)}" "$tmp/out"
  # Started through the dynamic loader, /proc/self/exe is the loader: the restart must still run dagr.
  loader=$(readelf -l "$dagr" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  env -u OPENBLAS_CORETYPE "$loader" "$dagr" --version > "$tmp/out" 2>&1
  expect "started as '$loader dagr', dagr restarts as dagr" grep -qF "OpenBLAS $kernels kernels" "$tmp/out"
fi

"$dagr" train --help > "$tmp/out" 2>&1
expect "--help shows defaults" grep -Eq -- '--epochs .*=10' "$tmp/out"
"$dagr" launch --help > "$tmp/out" 2>&1
expect "--help shows the collective timeout's real default" grep -Eq -- '--timeout .*=300' "$tmp/out"

DAGR_LOG_LEVEL=loud "$dagr" bench -n 2 --min 8 --max 8 > "$tmp/out" 2>&1
status=$?
expect "a bad DAGR_LOG_LEVEL is exit 2" test "$status" -eq 2
expect "... with one line naming the levels" test "$(grep -c 'DAGR_LOG_LEVEL=.loud. is not one of off, error, warn, info, debug, trace' "$tmp/out")" -eq 1 \
  -a "$(wc -l < "$tmp/out")" -eq 1

bench() { timeout 120 "$dagr" bench -n 2 --min 4K --max 1M --iters 2 --warmup 0 "$@"; }

bench > "$tmp/out" 2> "$tmp/err"
expect "default level: the bench runs and logs nothing" test $? -eq 0 -a "$(grep -c ' dagr ' "$tmp/err")" -eq 0

DAGR_LOG_LEVEL=info bench > "$tmp/out" 2> "$tmp/err"
expect "info: the bench runs" test $? -eq 0
for r in 0 1; do
  expect "info: rank $r says what it joined, prefixed with its rank" \
    grep -Eq "dagr rank $r pid [0-9]+ info: dagr [0-9.]+ joined: rank $r of 2 on shm" "$tmp/err"
  expect "info: the launcher logs rank $r's start and exit" \
    bash -c "grep -Eq 'dagr launch pid [0-9]+ info: .*rank $r of 2 started as pid' '$tmp/err' &&
             grep -Eq 'dagr launch pid [0-9]+ info: .*rank $r exited with status 0' '$tmp/err'"
done
expect "info: no per-collective lines" test "$(grep -c ' debug: ' "$tmp/err")" -eq 0

DAGR_LOG_LEVEL=debug bench > "$tmp/out" 2> "$tmp/err"
expect "debug: the bench runs" test $? -eq 0
# 4 KiB from each of 2 ranks is under the one-step limit; 1 MiB is not.
expect "debug: a small allreduce takes the one-step path" \
  grep -Eq 'rank 0 pid [0-9]+ debug: shm .* allreduce\(sum, float32, count=1024\): one-step' "$tmp/err"
expect "debug: a large allreduce takes the pipelined path" \
  grep -Eq 'rank 1 pid [0-9]+ debug: shm .* allreduce\(sum, float32, count=262144\): pipelined' "$tmp/err"
expect "debug: each collective's time" \
  grep -Eq 'debug: allreduce\(sum, float32, count=262144\) on shm rank [01]/2: [0-9.]+ us' "$tmp/err"

finish
