#!/usr/bin/env bash
# The parameter server beside DDP on the same cores (docs/PERFORMANCE.md):
# 3 epochs of the MLP on Fashion-MNIST, default hyper-parameters (Adam, lr
# 1e-3, cosine, batch 64 per worker), interleaved runs of
#   ddp:   dagr train --workers 2                       (synchronous DDP)
#   async: dagr train --mode ps --servers 1 --async --staleness K --workers 3
#          (1 server + 2 workers: 3 processes on 2 cores, oversubscribed)
#   sync:  the same, synchronous
# Prints per run and as medians: samples/s over the run's wall time
# (3 × 60000 / the seconds in metrics.jsonl's summary, evaluation included, so
# that both modes are timed alike) and the final test accuracy.
# Usage: scripts/perf_ps.sh DAGR [RUNS (3)] [K (4)] [OUT (bench-out/ps)]
set -euo pipefail
dagr=$1 runs=${2:-3} bound=${3:-4} out=${4:-bench-out/ps}
mkdir -p "$out"
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
summary() {  # seconds, test accuracy of a run's summary line
  python3 -c 'import json,sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("summary"): print(j["seconds"], j["test_accuracy"])' "$1/metrics.jsonl"
}
declare -A rate acc
for i in $(seq 1 "$runs"); do
  for mode in ddp async sync; do
    case $mode in
      ddp) args=(--workers 2) ;;
      async) args=(--mode ps --servers 1 --async --staleness "$bound" --workers 3) ;;
      sync) args=(--mode ps --servers 1 --workers 3) ;;
    esac
    "$dagr" train --epochs 3 "${args[@]}" --out "$out/$mode-$i" > "$out/$mode-$i.log" 2>&1
    read -r seconds accuracy < <(summary "$out/$mode-$i")
    r=$(awk -v s="$seconds" 'BEGIN { printf "%.0f", 180000 / s }')
    rate[$mode]+="$r "
    acc[$mode]+="$accuracy "
    echo "run $i $mode: ${seconds} s, $r samples/s, test accuracy $accuracy; load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for mode in ddp async sync; do
  echo "median $mode: $(echo "${rate[$mode]}" | median) samples/s, test accuracy $(echo "${acc[$mode]}" | median)"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
