#!/usr/bin/env bash
# Secure aggregation beside plain float32 allreduce across a network: dagr's
# MPI backend on two emulated hosts (scripts/lib/two_hosts.sh), 2 ranks (one
# per host) and 4 (two per host: half the pairs talk across the link, half
# within a host), on the unshaped veth link and on one shaped
# to RATE by a token bucket. `dagr bench allreduce --backend mpi` with and
# without --secure, interleaved, RUNS launches each; the median time per size
# and the ratio secure / plain. Needs root. Cleans up after itself.
# Usage: scripts/perf_secure_net.sh [RUNS=3] [DAGR=build/dagr] [RATE=1gbit]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
dagr=$(realpath "${2:-build/dagr}")
rate=${3:-1gbit}
source scripts/lib/two_hosts.sh
values=$(mktemp); trap 'rm -f "$values"; two_hosts_down' EXIT
for link in veth "$rate"; do
  for ranks in 2 4; do
    if [ "$link" = veth ]; then two_hosts_up $((ranks / 2)); else two_hosts_up $((ranks / 2)) "$rate"; fi
    for _ in $(seq "$runs"); do
      for mode in plain secure; do
        flags=(); [ "$mode" = secure ] && flags=(--secure)
        two_hosts_mpirun "$ranks" "$dagr" bench allreduce --backend mpi --min 1M --max 16M "${flags[@]}" --json |
          sed -n 's/.*"bytes":\([0-9]*\),.*"time_us":\([0-9.e+]*\).*/'"$link $ranks $mode"' \1 \2/p' >> "$values"
      done
    done
  done
done
printf '%7s %5s %10s %14s %14s %8s\n' link ranks bytes "plain us" "secure us" ratio
sort -k1,1 -k2,2n -k4,4n -k3,3 -k5,5g "$values" | awk '
  function median(a, n) { return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function flush() { if (key != "") { if (mode == "plain") p = median(v, n); else { s = median(v, n); printf "%7s %5d %10d %14.0f %14.0f %8.2f\n", l, r, b, p, s, s / p } } }
  { k = $1 " " $2 " " $4 " " $3 } k != key { flush(); key = k; l = $1; r = $2; b = $4; mode = $3; n = 0 } { v[++n] = $5 }
  END { flush() }'
lscpu | sed -n 's/^Model name: *//p'
