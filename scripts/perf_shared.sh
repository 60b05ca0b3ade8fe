#!/usr/bin/env bash
# Allreduce in place on shared buffers (Communicator::allocate_shared) beside the
# staged path and OpenMPI's MPI_Allreduce (the anchor, vader/CMA shared memory),
# 2 ranks, 16 and 64 MiB of float32, interleaved RUNS times; medians of busbw
# and the ratios shared / staged and shared / OpenMPI.
# Usage: scripts/perf_shared.sh [RUNS=5] [DAGR=build/dagr]
set -euo pipefail
runs=${1:-5}
dagr=${2:-build/dagr}
anchors=$(cd "$(dirname "$0")/../../shared/anchors" 2>/dev/null && pwd) || anchors=""
values=$(mktemp); trap 'rm -f "$values"' EXIT
export ANCHORS_OUT=${ANCHORS_OUT:-$(mktemp -d)}
for _ in $(seq "$runs"); do
  for mode in staged shared; do
    flags=(); [ "$mode" = shared ] && flags=(--shared)
    "$dagr" bench allreduce -n 2 --min 16M --max 64M "${flags[@]}" --json |
      sed -n 's/.*"busbw":\([0-9.e+]*\),.*"bytes":\([0-9]*\),.*/'"$mode"' \2 \1/p' >> "$values"
  done
  if [ -n "$anchors" ]; then
    "$anchors/mpi_allreduce.sh" 1 1.0 2>/dev/null |
      sed -n 's/^mpi_np2_16MiB_busbw \([0-9.]*\).*/openmpi 16777216 \1/p; s/^mpi_np2_64MiB_busbw \([0-9.]*\).*/openmpi 67108864 \1/p' >> "$values"
  fi
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%10s %14s %14s %14s %16s %16s\n' bytes "staged GB/s" "shared GB/s" "OpenMPI GB/s" "shared/staged" "shared/OpenMPI"
for bytes in 16777216 67108864; do
  m() { awk -v k="$1" -v b="$bytes" '$1 == k && $2 == b { print $3 }' "$values" | median; }
  staged=$(m staged) shared=$(m shared) mpi=$(m openmpi)
  awk -v b="$bytes" -v s="$staged" -v h="$shared" -v o="${mpi:-0}" 'BEGIN {
    printf "%10d %14.2f %14.2f %14.2f %16.2f %16s\n", b, s, h, o, h / s, (o > 0 ? sprintf("%.2f", h / o) : "-") }'
done
echo "busbw (nccl-tests' allreduce factor 2(n-1)/n); medians of $runs; $(lscpu | sed -n 's/^Model name: *//p'); load $(cut -d' ' -f1-3 /proc/loadavg)"
