#!/usr/bin/env bash
# dagr train with and without --zero (plain DDP, ZeRO-1, ZeRO-2), same flags,
# interleaved, ROUNDS launches each: samples/s in training steps and rank 0's
# step time from each run's summary, then the medians and their ratio to DDP.
# Usage: scripts/perf_zero.sh DAGR [ROUNDS] [dagr train flags...]
#   e.g. scripts/perf_zero.sh build/dagr 5 --workers 2 --epochs 1 --max-steps 400 --seed 1
set -euo pipefail
dagr=$1 rounds=${2:-5}
shift $(( $# >= 2 ? 2 : 1 ))
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--workers 2 --epochs 1 --max-steps 400 --seed 1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "load before: $(uptime)"
for i in $(seq 1 "$rounds"); do
  for z in 0 1 2; do
    log=$(timeout 600 "$dagr" train "${flags[@]}" --zero "$z" --out "$out/run$z" 2>&1)
    sps=$(sed -n 's/.*), \([0-9]*\) samples\/s in training.*/\1/p' <<< "$log")
    step=$(sed -n 's/^Per step (rank 0): \([0-9.]*\) ms.*/\1/p' <<< "$log")
    echo "round $i zero $z samples/s $sps step_ms $step" | tee -a "$out/all"
  done
done
echo "load after: $(uptime)"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
base=$(awk '$4 == 0 { print $6 }' "$out/all" | median)
for z in 0 1 2; do
  m=$(awk -v z="$z" '$4 == z { print $6 }' "$out/all" | median)
  s=$(awk -v z="$z" '$4 == z { print $8 }' "$out/all" | median)
  awk -v z="$z" -v m="$m" -v s="$s" -v b="$base" \
    'BEGIN { printf "zero %d: median %d samples/s (%.2fx DDP), median step %.3f ms\n", z, m, m / b, s }'
done
