#!/usr/bin/env bash
# Pipeline parallelism on 2 cores (issue 13): the deeper MLP (deep-mlp, DEPTH
# hidden layers of HIDDEN) trained by one process on one core beside 2
# pipeline stages (one core each) with GPipe and 1F1B, M micro-batches.
# Runs are interleaved, REPEATS rounds; prints each run and the medians of
# throughput (samples/s in training steps, after dagr train's 20 warm-up
# steps), measured bubble (averaged over the ranks, and the slowest stage's),
# the stages' imbalance, and peak activation memory (the largest stage's),
# beside (P-1)/(M+P-1), and the ratios the issue asks for; then, for each
# schedule, where each rank's step went in the last round (ms per step:
# forward and backward, receives, sends, the rest of the schedule, outside it).
#
#   scripts/perf_pipeline.sh [DAGR] [REPEATS] [M] [STEPS] [HIDDEN] [BATCH] [DEPTH]
set -euo pipefail
dagr=${1:-build/dagr}
repeats=${2:-3}
m=${3:-8}
steps=${4:-36}
hidden=${5:-1024}
batch=${6:-2048}
depth=${7:-8}
out=$(mktemp -d /tmp/perf_pipeline.XXXXXX)
trap 'rm -rf "$out"' EXIT

epochs=$(( (steps * batch + 59999) / 60000 ))  # enough epochs of Fashion-MNIST's 60000 for STEPS steps
common=(--model deep-mlp --hidden "$hidden" --depth "$depth" --batch-size "$batch" --optimizer sgd --lr 0.01 --epochs "$epochs"
        --max-steps "$steps" --threads 1)
summary() { grep '"summary"' "$1/metrics.jsonl"; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }

echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# deep-mlp hidden $hidden depth $depth, batch $batch, M $m, $steps steps per run, $repeats rounds"
declare -A tput bubble slowest imbalance mem split
for r in $(seq 1 "$repeats"); do
  OPENBLAS_NUM_THREADS=1 "$dagr" train --workers 1 "${common[@]}" --out "$out/one" > /dev/null 2> "$out/one.err"
  tput[one]+="$(summary "$out/one" | field samples_per_second) "
  for s in gpipe 1f1b; do
    OPENBLAS_NUM_THREADS=1 "$dagr" train --workers 2 --pipeline-parallel 2 --micro-batches "$m" --schedule-pp "$s" \
      "${common[@]}" --out "$out/$s" > /dev/null 2> "$out/$s.err"
    line=$(summary "$out/$s")
    tput[$s]+="$(echo "$line" | field samples_per_second) "
    bubble[$s]+="$(echo "$line" | field pipeline_bubble_measured) "
    slowest[$s]+="$(echo "$line" | field pipeline_bubble_slowest_stage) "
    imbalance[$s]+="$(echo "$line" | field pipeline_stage_imbalance) "
    mem[$s]+="$(echo "$line" | field pipeline_peak_activation_bytes) "
    split[$s]=$(echo "$line" | field pipeline_step_ms_per_rank)
  done
  echo "after round $r: one ${tput[one]}| gpipe ${tput[gpipe]}| 1f1b ${tput[1f1b]}(load $(cut -d' ' -f1 /proc/loadavg))"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
one=$(echo "${tput[one]}" | median)
python3 - "$one" "$m" \
  "$(echo "${tput[gpipe]}" | median)" "$(echo "${bubble[gpipe]}" | median)" "$(echo "${mem[gpipe]}" | median)" \
  "$(echo "${slowest[gpipe]}" | median)" "$(echo "${imbalance[gpipe]}" | median)" \
  "$(echo "${tput[1f1b]}" | median)" "$(echo "${bubble[1f1b]}" | median)" "$(echo "${mem[1f1b]}" | median)" \
  "$(echo "${slowest[1f1b]}" | median)" "$(echo "${imbalance[1f1b]}" | median)" <<'EOF'
import sys
one, m = float(sys.argv[1]), int(sys.argv[2])
P = 2
ideal = (P - 1) / (m + P - 1)
rows = {"gpipe": sys.argv[3:8], "1f1b": sys.argv[8:13]}
print(f"one process, 1 core: {one:.0f} samples/s")
for name, (t, b, mem, sl, im) in rows.items():
    t, b, mem, sl, im = float(t), float(b), float(mem), float(sl), float(im)
    print(f"{name:5s} 2 stages: {t:.0f} samples/s = {t / one:.2f}x one process; bubble {100 * b:.1f} % averaged, "
          f"{100 * sl:.1f} % on the slowest stage (formula {100 * ideal:.1f} %, {100 * (b - ideal):+.1f} / "
          f"{100 * (sl - ideal):+.1f} points); stage imbalance {im:.2f}; peak activation memory {mem / 2**20:.2f} MiB")
g, f = float(rows["gpipe"][2]), float(rows["1f1b"][2])
print(f"1F1B / GPipe peak activation memory: {f / g:.3f} (P/M = {P / m:.3f})")
EOF
for s in gpipe 1f1b; do
  python3 -c "import sys, ast
for r, (c, rv, sd, el, out) in enumerate(ast.literal_eval(sys.argv[2])):
    print(f'{sys.argv[1]:5s} rank {r} per step, ms: {c:.1f} forward+backward, {rv:.1f} receives, {sd:.1f} sends, '
          f'{el:.1f} else, {out:.1f} outside the schedule')" "$s" "${split[$s]}"
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
