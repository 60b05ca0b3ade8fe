#!/usr/bin/env bash
# dagr side by side with the anchors in ../shared/anchors, in one run, several
# launches each, interleaved so the machine's drift hits both alike.
# Usage: scripts/perf_vs_anchors.sh [RUNS=3]  (after `make build`; ~6 minutes)
# Writes bench-out/: raw logs and summary.txt (medians; the ratios in docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
dagr=build/dagr
anchors=../shared/anchors
out=bench-out
rm -rf "$out"; mkdir -p "$out"
export ANCHORS_OUT=$PWD/$out/anchors-build
source scripts/lib/same_blas.sh
same_blas_as "$dagr"
train() {  # name, then dagr train flags: appends "name samples_per_second" to the summary input
  local name=$1; shift
  "$dagr" train --optimizer sgd --lr 0.1 --momentum 0.9 --schedule constant --batch-size 64 --threads 1 \
    --out "$out/train-$name" "$@" > "$out/train-$name.log" 2>&1
  sed -n '/"summary":true/ s/.*"samples_per_second":\([0-9.e+]*\).*/'"$name"' \1/p' "$out/train-$name/metrics.jsonl" >> "$out/values.txt"
  sed -n 's/.*"first_step_seconds":\([0-9.e+]*\).*/'"$name"'_first_step_s \1/p' "$out/train-$name/metrics.jsonl" >> "$out/values.txt"
}
for i in $(seq 1 "$RUNS"); do
  echo "=== run $i of $RUNS"
  for n in 2 4; do
    "$dagr" bench allreduce -n "$n" --min 8 --max 64M --json > "$out/dagr_np$n.$i.jsonl"
    awk -v n="$n" -F'[,:]' '{ for (k = 1; k <= NF; k++) { if ($k ~ /"bytes"/) b = $(k+1); if ($k ~ /"time_us"/) t = $(k+1); if ($k ~ /"busbw"/) w = $(k+1) }
         print "dagr_np" n "_" b "B_time", t; print "dagr_np" n "_" b "B_busbw", w }' "$out/dagr_np$n.$i.jsonl" >> "$out/values.txt"
  done
  "$anchors/mpi_allreduce.sh" 1 1.0 > "$out/mpi.$i.log" 2>&1
  grep -E '^mpi_np[24]_[0-9A-Za-z]+_(time|b2b_time|busbw) ' "$out/mpi.$i.log" | awk '{print $1, $2}' >> "$out/values.txt"
  train mlp_2w --workers 2 --model mlp --epochs 1
  train mlp_1w --workers 1 --model mlp --epochs 1
  train cnn_2w --workers 2 --model cnn --max-steps 220
  train cnn_1w --workers 1 --model cnn --max-steps 220
  "$anchors/libtorch_single.sh" 1 > "$out/libtorch.$i.log" 2>&1
  grep -E '^libtorch_(mlp|cnn)_sps ' "$out/libtorch.$i.log" | awk '{print $1, $2}' >> "$out/values.txt"
done
# PyTorch's own (gloo, DDP) need Debian's python3-torch (../shared/anchors/run_all.sh installs it): without
# it their lines are missing from the summary, and the logs say why.
/usr/bin/python3 "$anchors/gloo_allreduce.py" --runs "$RUNS" --budget 0.5 --worlds 2,4 > "$out/gloo.log" 2>&1 ||
  echo "gloo anchor failed: $(tail -1 "$out/gloo.log")" >&2
{ grep -E '^gloo_w[24]_[0-9A-Za-z]+_(time|b2b_time|busbw) ' "$out/gloo.log" || true; } | awk '{print $1, $2}' >> "$out/values.txt"
for m in mlp cnn; do
  /usr/bin/python3 "$anchors/torch_ddp_fmnist.py" --model $m --runs "$RUNS" --epochs 1 --configs plain,ddp2 > "$out/ddp_$m.log" 2>&1 ||
    echo "DDP anchor ($m) failed: $(tail -1 "$out/ddp_$m.log")" >&2
  { grep -E '^torch_(mlp|cnn)_(plain|ddp2)_sps ' "$out/ddp_$m.log" || true; } | awk '{print $1, $2}' >> "$out/values.txt"
done
"$anchors/stream.sh" 3 > "$out/stream.log" 2>&1
grep -E '^stream_' "$out/stream.log" | awk '{print $1, $2}' >> "$out/values.txt"
# Median of every figure.
sort -k1,1 -k2,2g "$out/values.txt" | awk '
  function flush() { if (name != "") { m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2; printf "%-34s %12.4g   (n=%d, %.4g-%.4g)\n", name, m, n, v[1], v[n] } }
  $1 != name { flush(); name = $1; n = 0 } { v[++n] = $2 } END { flush() }' > "$out/summary.txt"
cat "$out/summary.txt"
