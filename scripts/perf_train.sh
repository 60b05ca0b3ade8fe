#!/usr/bin/env bash
# Training throughput on this machine's shared memory beside one libtorch
# process: `dagr train` (MLP one epoch, CNN 220 steps; SGD 0.1 momentum 0.9,
# batch 64 per worker, one compute thread per worker) with 2 workers (each
# bound to a core, dagr train's default; unbound: --no-bind; and with the batch
# split by measured speed: --balance-batch) and with 1,
# and the single-process libtorch anchor (../shared/anchors/libtorch_single.sh,
# the same models in plain libtorch), RUNS times interleaved; and two anchors
# at once, one on each core (their samples/s added up): what this machine's
# two cores give two independent processes, against which dagr's 2 workers are
# also set (on a shared host the second core is not always a whole core).
# Prints the medians in samples/s and the ratios to the anchor.
# Usage: scripts/perf_train.sh [RUNS=3] [DAGR=build/dagr] [ANCHORS=../shared/anchors]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
dagr=$(realpath "${2:-build/dagr}")
anchors=${3:-../shared/anchors}
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
export ANCHORS_OUT=$out/anchors-build OPENBLAS_NUM_THREADS=1
source scripts/lib/same_blas.sh
same_blas_as "$dagr"
anchor_sps() {  # LOG [PREFIX]: the anchor's summary as lines "PREFIXmlp samples/s", "PREFIXcnn samples/s"
  sed -n '/=== SUMMARY/,$ s/^libtorch_\(mlp\|cnn\)_sps \([0-9.e+]*\).*/'"${2:-}"'\1 \2/p' "$1"
}
train() {  # name, then dagr train flags
  local name=$1; shift
  "$dagr" train --optimizer sgd --lr 0.1 --momentum 0.9 --schedule constant --batch-size 64 --threads 1 \
    --out "$out/$name" "$@" > "$out/$name.log" 2>&1 || { tail -5 "$out/$name.log" >&2; exit 1; }
  sed -n 's/.*"samples_per_second":\([0-9.e+]*\).*/'"$name"' \1/p' "$out/$name/metrics.jsonl" | tail -1 >> "$out/values"
  rm -rf "${out:?}/$name"
}
for i in $(seq "$runs"); do
  echo "run $i of $runs" >&2
  train mlp_2w --workers 2 --model mlp --epochs 1
  train mlp_2wu --workers 2 --model mlp --epochs 1 --no-bind
  train mlp_2wb --workers 2 --model mlp --epochs 1 --balance-batch
  train mlp_1w --workers 1 --model mlp --epochs 1
  train cnn_2w --workers 2 --model cnn --max-steps 220
  train cnn_2wu --workers 2 --model cnn --max-steps 220 --no-bind
  train cnn_2wb --workers 2 --model cnn --max-steps 220 --balance-batch
  train cnn_1w --workers 1 --model cnn --max-steps 220
  "$anchors/libtorch_single.sh" 1 > "$out/libtorch.log" 2>&1
  anchor_sps "$out/libtorch.log" libtorch_ >> "$out/values"
  taskset -c 0 "$anchors/libtorch_single.sh" 1 > "$out/pair0.log" 2>&1 &
  taskset -c 1 "$anchors/libtorch_single.sh" 1 > "$out/pair1.log" 2>&1
  wait
  { anchor_sps "$out/pair0.log"; anchor_sps "$out/pair1.log"; } | awk '{ s[$1] += $2; n[$1]++ } END { for (m in s) if (n[m] == 2) print "pair_" m, s[m] }' >> "$out/values"
done
sort -k1,1 -k2,2g "$out/values" | awk '
  function flush() { if (name != "") M[name] = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
  $1 != name { flush(); name = $1; n = 0 } { v[++n] = $2; all[$1] = all[$1] " " int($2) } END { flush()
    split("mlp cnn", models, " ")
    for (k = 1; k <= 2; k++) { x = models[k]; a = M["libtorch_" x]
      printf "%s: libtorch 1 process %.0f; dagr 1 worker %.0f (%.2fx); dagr 2 workers %.0f (%.2fx), unbound %.0f (%.2fx), balanced %.0f (%.2fx); 2 libtorch processes at once %.0f (%.2fx), dagr 2 workers %.2f of it, balanced %.2f   runs: 2w%s / unbound%s / balanced%s / anchor%s / 2 anchors%s\n",
        x, a, M[x "_1w"], M[x "_1w"] / a, M[x "_2w"], M[x "_2w"] / a, M[x "_2wu"], M[x "_2wu"] / a, M[x "_2wb"],
        M[x "_2wb"] / a, M["pair_" x], M["pair_" x] / a, M[x "_2w"] / M["pair_" x], M[x "_2wb"] / M["pair_" x],
        all[x "_2w"], all[x "_2wu"], all[x "_2wb"], all["libtorch_" x], all["pair_" x] } }'
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg); BLAS: $("$dagr" --version | sed -n 's/.*, \(OpenBLAS.*kernels\).*/\1/p')"
