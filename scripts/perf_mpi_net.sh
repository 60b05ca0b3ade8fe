#!/usr/bin/env bash
# dagr's MPI backend beside raw MPI_Allreduce across a network: two network
# namespaces joined by a veth pair (unshaped), one rank in each, as the two-host
# test of tests/mpi_tests.sh. Allreduce (float sum) at 8 B, 1 KiB, 64 KiB,
# 1 MiB, 16 MiB; RUNS interleaved launches of each; the median per size and the
# ratio dagr / raw MPI (blocking MPI_Allreduce). Raw MPI_Iallreduce + MPI_Wait
# is shown too (dagr's backend is non-blocking). Both time back-to-back calls
# (mean, max over ranks). Needs root (ip netns). Cleans up after itself.
# With BASELINE (another build's dagr), that one is measured in the same runs
# too ("base" columns), e.g. to compare before and after a change.
# Usage: scripts/perf_mpi_net.sh [RUNS=5] [DAGR=build/dagr] [BASELINE]
# Writes bench-out/mpi-net-values.txt (every run) and bench-out/mpi-net-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
DAGR=$(realpath "${2:-build/dagr}")
BASELINE=${3:+$(realpath "$3")}
SIZES="8 1024 65536 1048576 16777216"
out=$PWD/bench-out; mkdir -p "$out"; : > "$out/mpi-net-values.txt"
work=$(mktemp -d)
h1=dagr-pn1-$$ h2=dagr-pn2-$$
cleanup() { ip netns del "$h1" 2>/dev/null || true; ip netns del "$h2" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mpicc -O2 -Wall scripts/mpi_raw_allreduce.c -o "$work/raw"
ip netns add "$h1"; ip netns add "$h2"
ip link add pv1-$$ type veth peer name pv2-$$
ip link set pv1-$$ netns "$h1"; ip link set pv2-$$ netns "$h2"
ip -n "$h1" addr add 10.232.0.1/24 dev pv1-$$; ip -n "$h2" addr add 10.232.0.2/24 dev pv2-$$
for ns in "$h1" "$h2"; do ip -n "$ns" link set lo up; done
ip -n "$h1" link set pv1-$$ up; ip -n "$h2" link set pv2-$$ up
printf '10.232.0.1 slots=1\n10.232.0.2 slots=1\n' > "$work/hosts"
# rsh agent: "HOST COMMAND..." -> run COMMAND in the namespace of HOST
printf '#!/bin/sh\nhost=$1; shift\ncase $host in 10.232.0.2) ns=%s ;; *) ns=%s ;; esac\nexec ip netns exec $ns sh -c "$*"\n' \
  "$h2" "$h1" > "$work/agent"
chmod +x "$work/agent"
# On 2 cores two ranks must yield when idle, or each message waits for a scheduler tick.
run2() {
  timeout 300 ip netns exec "$h1" mpirun --allow-run-as-root --hostfile "$work/hosts" -np 2 \
    --mca plm_rsh_agent "$work/agent" --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include 10.232.0.0/24 \
    --mca oob_tcp_if_include 10.232.0.0/24 --mca mpi_yield_when_idle 1 --bind-to none "$@"
}
for i in $(seq 1 "$RUNS"); do
  run2 "$work/raw" 0.3 $SIZES >> "$out/mpi-net-values.txt"
  for which in dagr ${BASELINE:+base}; do
    bin=$DAGR; [ "$which" = base ] && bin=$BASELINE
    run2 "$bin" bench allreduce --backend mpi --min 8 --max 16M --json > "$work/dagr.jsonl"
    for s in $SIZES; do
      sed -n 's/.*"bytes":'"$s"',.*"time_us":\([0-9.e+]*\).*/'"$which"'_'"$s"'B_time \1/p' "$work/dagr.jsonl" >> "$out/mpi-net-values.txt"
    done
    if grep -q '"correct":false' "$work/dagr.jsonl"; then echo "$bin bench: a wrong result" >&2; exit 1; fi
  done
done
# Median per name, then the ratio dagr / raw MPI per size.
sort -k1,1 -k2,2g "$out/mpi-net-values.txt" | awk -v sizes="$SIZES" -v base="${BASELINE:+1}" '
  function flush() { if (name != "") { med[name] = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2; lo[name] = v[1]; hi[name] = v[n]; cnt[name] = n } }
  $1 != name { flush(); name = $1; n = 0 } { v[++n] = $2 }
  END { flush(); k = split(sizes, s, " ")
    printf "%10s %12s %14s %14s %9s %9s", "bytes", "dagr mpi us", "MPI_Allreduce", "Iallreduce", "dagr/raw", "dagr/nb"
    if (base) printf " %12s %9s", "base us", "base/raw"
    printf "   (ranges)\n"
    for (j = 1; j <= k; j++) { d = "dagr_" s[j] "B_time"; r = "mpi_" s[j] "B_time"; b = "mpi_nb_" s[j] "B_time"; o = "base_" s[j] "B_time"
      printf "%10d %12.2f %14.2f %14.2f %8.2fx %8.2fx", s[j], med[d], med[r], med[b], med[d] / med[r], med[d] / med[b]
      if (base) printf " %12.2f %8.2fx", med[o], med[o] / med[r]
      printf "   (dagr %.4g-%.4g, raw %.4g-%.4g, n=%d)\n", lo[d], hi[d], lo[r], hi[r], cnt[d] } }' | tee "$out/mpi-net-summary.txt"
