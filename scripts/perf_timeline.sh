#!/usr/bin/env bash
# What --timeline costs `dagr train`: the same short run with and without it,
# interleaved (alternating which goes first), RUNS times each; the median of the summary's samples/s (training
# steps after the 20 warm-up steps) and the ratio. Extra arguments go to both
# runs (default: MLP, 2 workers, batch 64, 600 steps: the shortest steps, the
# largest relative cost).
# Usage: scripts/perf_timeline.sh [RUNS=5] [DAGR=build/dagr] [dagr train flags...]
set -euo pipefail
runs=${1:-5}
dagr=${2:-build/dagr}
shift $(( $# < 2 ? $# : 2 ))
flags=("$@")
[ ${#flags[@]} -eq 0 ] && flags=(--workers 2 --batch-size 64 --epochs 1 --max-steps 600)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
  order="off on"; [ $((i % 2)) -eq 0 ] && order="on off"  # alternate which goes first
  for mode in $order; do
    extra=(); [ "$mode" = on ] && extra=(--timeline "$out/timeline.json")
    "$dagr" train "${flags[@]}" --out "$out/run" "${extra[@]}" |
      sed -n 's/^Summary: .*, \([0-9]*\) samples\/s in training steps.*/'"$mode"' \1/p' >> "$out/values"
  done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
off=$(awk '$1 == "off" { print $2 }' "$out/values" | median)
on=$(awk '$1 == "on" { print $2 }' "$out/values" | median)
echo "off: $(awk '$1 == "off" { printf "%s ", $2 }' "$out/values")-> median $off samples/s"
echo "on:  $(awk '$1 == "on" { printf "%s ", $2 }' "$out/values")-> median $on samples/s"
awk -v a="$on" -v b="$off" 'BEGIN { printf "on / off: %.3f\n", a / b }'
lscpu | sed -n 's/^Model name: *//p'
uptime
