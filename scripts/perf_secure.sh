#!/usr/bin/env bash
# Secure aggregation beside plain float32 allreduce on this machine's shared
# memory: `dagr bench allreduce` with and without --secure, interleaved, RUNS
# times, 2 and 4 ranks; the median time per size and the ratio secure / plain.
# Usage: scripts/perf_secure.sh [RUNS=5] [DAGR=build/dagr]
set -euo pipefail
runs=${1:-5}
dagr=${2:-build/dagr}
values=$(mktemp); trap 'rm -f "$values"' EXIT
for ranks in 2 4; do
  for _ in $(seq "$runs"); do
    for mode in plain secure; do
      flags=(); [ "$mode" = secure ] && flags=(--secure)
      "$dagr" bench allreduce -n "$ranks" --min 1M --max 16M "${flags[@]}" --json |
        sed -n 's/.*"bytes":\([0-9]*\),.*"time_us":\([0-9.e+]*\).*/'"$ranks $mode"' \1 \2/p' >> "$values"
    done
  done
done
printf '%5s %10s %14s %14s %8s\n' ranks bytes "plain us" "secure us" ratio
sort -k1,1n -k3,3n -k2,2 -k4,4g "$values" | awk '
  function median(a, n) { return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function flush() { if (key != "") { if (mode == "plain") p = median(v, n); else { s = median(v, n); printf "%5d %10d %14.0f %14.0f %8.2f\n", r, b, p, s, s / p } } }
  { k = $1 " " $3 " " $2 } k != key { flush(); key = k; r = $1; b = $3; mode = $2; n = 0 } { v[++n] = $4 }
  END { flush() }'
lscpu | sed -n 's/^Model name: *//p'
