#!/usr/bin/env bash
# `dagr train --pipeline-parallel` on the real Fashion-MNIST, a short run: 2
# stages (1F1B, 4 micro-batches) learn; the dense model.pt loads in `dagr
# infer` at another layout (one worker) with the test accuracy training
# reported; the summary's peak in-flight is the schedule's; --print-schedule
# draws the schedule without training; bad pipeline flags fail with one line
# and exit 2. (P × D = 2 × 2 and the other layouts: pipeline_tests, ranks as
# threads.) Usage: pipeline_train_tests.sh DAGR
set -uo pipefail
dagr=$1
source "$(dirname "$0")/testlib.sh"
export OPENBLAS_NUM_THREADS=1
run() { local out=$1; shift; timeout 120 "$dagr" train --batch-size 64 --epochs 1 --max-steps 40 --lr 0.005 \
          --out "$tmp/$out" "$@" > "$tmp/$out.log" 2>&1; }

run p2 --workers 2 --pipeline-parallel 2 --micro-batches 4 --schedule-pp 1f1b
expect "2 stages: the run succeeds" test $? -eq 0
cat "$tmp/p2.log"
acc=$(sed -n 's/^Epoch 1: .*test accuracy \([0-9.]*\) .*/\1/p' "$tmp/p2.log")
expect "2 stages learn (test accuracy $acc > 0.6 after 40 steps)" awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }'
expect "1F1B's measured peak in-flight is the schedule's (2)" \
  grep -q "peak in-flight micro-batches 2 (schedule: 2)" "$tmp/p2.log"
timeout 60 "$dagr" infer --checkpoint "$tmp/p2/model.pt" --model mlp --workers 1 > "$tmp/infer.log" 2>&1
expect "dagr infer (one worker) reads the gathered model: accuracy $acc" grep -q "^accuracy $acc " "$tmp/infer.log"

timeout 30 "$dagr" train --model deep-mlp --hidden 1024 --pipeline-parallel 2 --micro-batches 4 --schedule-pp gpipe \
  --print-schedule > "$tmp/schedule.log" 2>&1
expect "--print-schedule exits 0" test $? -eq 0
cat "$tmp/schedule.log"
expect "--print-schedule: the stages" grep -q "^stage 1: layers 9..17 of deep-mlp, 4208650 parameters" "$tmp/schedule.log"
expect "--print-schedule: the picture" grep -q "^rank 1  .  F0 F1 F2 F3 B0 B0 B1 B1 B2 B2 B3 B3" "$tmp/schedule.log"
expect "--print-schedule: the bubble" grep -q "bubble 20.0 %" "$tmp/schedule.log"

bad "more micro-batches than the batch" --pipeline-parallel 2 --micro-batches 65 --batch-size 64
bad "more stages than layers" --pipeline-parallel 5
bad "--resume with a pipeline" --pipeline-parallel 2 --resume
finish
