#!/usr/bin/env bash
# DDP communication hooks on a real-looking network: `dagr train` on the MPI
# backend, 2 ranks (--workers 1 each), one on each of two emulated hosts
# (scripts/lib/two_hosts.sh: network namespaces joined by a veth pair, each end
# shaped to RATE by a token bucket; this kernel has no netem, so no added
# delay). For each hook (none = plain allreduce, fp16, bf16, powersgd rank
# 2 from step 100, and powersgd+fp16: the same with its warm-up in fp16,
# --powersgd-uncompressed fp16) and model, RUNS runs interleaved: samples/s in training
# steps over the whole run (dagr train's summary) and after the first epoch
# (the mean of epochs 2 to EPOCHS' own samples/s: PowerSGD compressing
# throughout, its warm-up of POWERSGD_START_ITER=100 steps being shorter than
# an epoch's 469), and the wall time to 85 % test
# accuracy (the first evaluation that reaches it, from metrics.jsonl; the test
# set is measured every EVAL_EVERY=50 steps, time not counted; "-" if none
# does). Prints the medians and the ratios to plain allreduce. With
# CURVES=FILE.svg, also draws test accuracy against time of each hook's first
# run (scripts/accuracy_svg.py). Needs root. Cleans up after itself (the
# namespaces go with the shell; runs are in a temporary folder).
# Usage: scripts/perf_hooks_net.sh [RUNS=3] [DAGR=build/dagr] [RATE=1gbit] [MODELS="mlp"] [EPOCHS=3]
# Extra flags for every run in DAGR_TRAIN_FLAGS (e.g. --batch-size 16).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
dagr=$(realpath "${2:-build/dagr}")
rate=${3:-1gbit}
models=${4:-mlp}
epochs=${5:-3}
source scripts/lib/two_hosts.sh
out=$(mktemp -d)
values=$out/values
trap 'rm -rf "$out"; two_hosts_down' EXIT
two_hosts_up 1 "$rate"
hooks=(none fp16 bf16 powersgd powersgd+fp16)
for model in $models; do
  for i in $(seq "$runs"); do
    for hook in "${hooks[@]}"; do
      flags=(--comm-hook "${hook%+*}")
      [ "${hook%+*}" = powersgd ] && flags+=(--powersgd-rank 2 --powersgd-start-iter "${POWERSGD_START_ITER:-100}")
      [ "$hook" = powersgd+fp16 ] && flags+=(--powersgd-uncompressed fp16)
      dir=$out/$model-$hook-$i
      two_hosts_mpirun 2 -x OPENBLAS_NUM_THREADS=1 "$dagr" train --model "$model" --epochs "$epochs" \
        --eval-every "${EVAL_EVERY:-50}" "${flags[@]}" ${DAGR_TRAIN_FLAGS:-} --out "$dir" > "$dir.log" 2>&1 ||
        { tail -5 "$dir.log" >&2; exit 1; }
      rate_s=$(sed -n 's/.* \([0-9]*\) samples\/s in training steps.*/\1/p' "$dir.log")
      # Epochs 2 on: the epoch lines (not the summary) after the first, their samples/s averaged.
      last_s=$(grep '"samples_per_second"' "$dir/metrics.jsonl" | grep -v '"summary"' | tail -n +2 |
               sed 's/.*"samples_per_second":\([0-9.]*\).*/\1/' | awk '{ s += $1 } END { print NR ? s / NR : 0 }')
      # Wall time to 85 %: the first line at or above it.
      to85=$(awk -F'[:,}]' '{ for (k = 1; k < NF; k++) { if ($k ~ /"test_accuracy"/) a = $(k + 1); if ($k ~ /"seconds"/) s = $(k + 1) }
                            if (a >= 0.85 && !/summary/) { print s; exit } }' "$dir/metrics.jsonl")
      acc=$(sed -n 's/.*"summary":true.*"test_accuracy":\([0-9.]*\).*/\1/p' "$dir/metrics.jsonl")
      echo "$model $hook $rate_s ${to85:--} $acc ${last_s%.*}" | tee -a "$values"
    done
  done
done
echo
printf '%-5s %-13s %12s %8s %12s %8s %12s %8s %10s\n' model hook samples/s ratio "s to 85 %" ratio "epochs 2+" ratio "final acc"
sort -k1,1 -k2,2 "$values" | awk '
  function median(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
                                     return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  { k = $1 " " $2; n[k]++; r[k, n[k]] = $3; if ($4 != "-") { m[k]++; t[k, m[k]] = $4 }; acc[k, n[k]] = $5; last[k, n[k]] = $6; keys[k] = 1 }
  END {
    for (k in keys) { split(k, p, " "); delete x; for (i = 1; i <= n[k]; i++) x[i] = r[k, i]; R[k] = median(x, n[k])
      delete x; for (i = 1; i <= m[k]; i++) x[i] = t[k, i]; T[k] = m[k] ? median(x, m[k]) : -1
      delete x; for (i = 1; i <= n[k]; i++) x[i] = acc[k, i]; A[k] = median(x, n[k])
      delete x; for (i = 1; i <= n[k]; i++) x[i] = last[k, i]; L[k] = median(x, n[k]) }
    for (k in keys) { split(k, p, " "); b = p[1] " none"
      printf "%-5s %-13s %12.0f %7.2fx %12s %8s %12.0f %7.2fx %10.4f\n", p[1], p[2], R[k], R[k] / R[b],
        T[k] < 0 ? "-" : sprintf("%.2f", T[k]), (T[k] < 0 || T[b] <= 0) ? "-" : sprintf("%.2fx", T[k] / T[b]),
        L[k], L[k] / L[b], A[k] } }' | sort
if [ -n "${CURVES:-}" ]; then
  for model in $models; do
    file=$CURVES
    [ "$models" = "$model" ] || file=${CURVES%.svg}-$model.svg
    python3 scripts/accuracy_svg.py "$file" "$model, 2 ranks on a $rate link: test accuracy against wall time" \
      "plain allreduce=$out/$model-none-1/metrics.jsonl" "fp16=$out/$model-fp16-1/metrics.jsonl" \
      "bf16=$out/$model-bf16-1/metrics.jsonl" "PowerSGD rank 2=$out/$model-powersgd-1/metrics.jsonl" \
      "PowerSGD rank 2, fp16 warm-up=$out/$model-powersgd+fp16-1/metrics.jsonl"
    echo "curves: $file"
  done
fi
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg); link: $rate; BLAS: $("$dagr" --version | sed -n 's/.*, \(OpenBLAS.*kernels\).*/\1/p')"
