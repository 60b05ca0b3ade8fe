#!/usr/bin/env bash
# --balance-batch where one core is slower: `dagr train` with 2 workers (the
# job held to CPUs 0 and 1, so rank 1 is bound to CPU 1) while a busy loop
# shares CPU 1 with rank 1, with an equal split and with --balance-batch,
# RUNS times interleaved; MLP one epoch and CNN 150 steps (SGD 0.1 momentum
# 0.9, batch 64 per worker). Prints the medians in samples/s, the ratio
# balanced / equal, and the balanced runs' final split.
# Usage: scripts/perf_balance.sh [RUNS=3] [DAGR=build/dagr]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
dagr=$(realpath "${2:-build/dagr}")
out=$(mktemp -d)
timeout 3600 taskset -c 1 sh -c 'while :; do :; done' < /dev/null > /dev/null 2>&1 & hog=$!
trap 'kill $hog 2> /dev/null; rm -rf "$out"' EXIT
train() {  # name, then dagr train flags
  local name=$1; shift
  taskset -c 0,1 "$dagr" train --workers 2 --optimizer sgd --lr 0.1 --momentum 0.9 --schedule constant \
    --batch-size 64 --out "$out/$name" "$@" > "$out/$name.log" 2>&1 || { tail -5 "$out/$name.log" >&2; exit 1; }
  sed -n 's/.*"samples_per_second":\([0-9.e+]*\).*/'"$name"' \1/p' "$out/$name/metrics.jsonl" | tail -1 >> "$out/values"
  sed -n 's/^Batch split by measured speed (--balance-batch): \(.*\) of each.*/'"$name"': \1/p' "$out/$name.log" >> "$out/splits"
  rm -rf "${out:?}/$name"
}
for i in $(seq "$runs"); do
  echo "run $i of $runs" >&2
  train mlp_equal --model mlp --epochs 1
  train mlp_balanced --model mlp --epochs 1 --balance-batch
  train cnn_equal --model cnn --max-steps 150
  train cnn_balanced --model cnn --max-steps 150 --balance-batch
done
sort -k1,1 -k2,2g "$out/values" | awk '
  function flush() { if (name != "") M[name] = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
  $1 != name { flush(); name = $1; n = 0 } { v[++n] = $2; all[$1] = all[$1] " " int($2) } END { flush()
    split("mlp cnn", models, " ")
    for (k = 1; k <= 2; k++) { x = models[k]
      printf "%s, CPU 1 shared with a busy loop: equal split %.0f, --balance-batch %.0f (%.2fx)   runs: equal%s / balanced%s\n",
        x, M[x "_equal"], M[x "_balanced"], M[x "_balanced"] / M[x "_equal"], all[x "_equal"], all[x "_balanced"] } }'
sort "$out/splits" | sed 's/^/split /'
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
