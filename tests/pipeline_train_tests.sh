#!/usr/bin/env bash
# `dagr train --pipeline-parallel` on the real Fashion-MNIST, a short run: 2
# stages (1F1B, 4 micro-batches) learn; the dense model.pt loads in `dagr
# infer` at another layout (one worker) with the test accuracy training
# reported, and `dagr infer --pipeline-parallel 2` serves it as a pipeline with
# the same predictions' count; the summary's peak in-flight is the schedule's;
# resumed from its dense step-20 checkpoint the run ends bitwise where it did;
# the same with the deep-mlp's stages split by tensor parallelism (P × T =
# 2 × 2, 4 workers); --print-schedule draws the schedule without training (and
# cuts the deep-mlp of --depth 16 where parameters balance); bad pipeline
# flags (train and infer), and a checkpoint read at another --depth, fail with
# one line and exit 2. (P × D = 2 × 2,
# P × T × D = 2 × 2 × 2, and the parameters against one process:
# pipeline_tests, ranks as threads.)
# Usage: pipeline_train_tests.sh DAGR COMPARE_MODELS
set -uo pipefail
dagr=$1 compare_models=$2
source "$(dirname "$0")/testlib.sh"
export OPENBLAS_NUM_THREADS=1
run() { local out=$1; shift; timeout 120 "$dagr" train --batch-size 64 --epochs 1 --max-steps 40 --lr 0.005 \
          --out "$tmp/$out" "$@" > "$tmp/$out.log" 2>&1; }

pp=(--workers 2 --pipeline-parallel 2 --micro-batches 4 --schedule-pp 1f1b)
run p2 "${pp[@]}" --checkpoint-every 20
expect "2 stages: the run succeeds" test $? -eq 0
cat "$tmp/p2.log"
acc=$(sed -n 's/^Epoch 1: .*test accuracy \([0-9.]*\) .*/\1/p' "$tmp/p2.log")
expect "2 stages learn (test accuracy $acc > 0.6 after 40 steps)" awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }'
expect "1F1B's measured peak in-flight is the schedule's (2)" \
  grep -q "peak in-flight micro-batches 2 (schedule: 2)" "$tmp/p2.log"
summary=$(grep '"summary"' "$tmp/p2/metrics.jsonl")
expect "the summary splits the bubble: the slowest stage's idle share (at most the averaged one) and the imbalance" \
  python3 -c "import json, sys; d = json.loads(sys.argv[1]); b, s, i = (d['pipeline_bubble_measured'],
    d['pipeline_bubble_slowest_stage'], d['pipeline_stage_imbalance']); print(b, s, i)
sys.exit(not (0 <= s <= b + 0.05 and b < 1 and 1 <= i < 3))" "$summary"
expect "the slowest stage's line" grep -q "^Pipeline: the slowest stage (rank [01]) idles" "$tmp/p2.log"
timeout 60 "$dagr" infer --checkpoint "$tmp/p2/model.pt" --model mlp --workers 1 > "$tmp/infer.log" 2>&1
expect "dagr infer (one worker) reads the gathered model: accuracy $acc" grep -q "^accuracy $acc " "$tmp/infer.log"
timeout 60 "$dagr" infer --checkpoint "$tmp/p2/model.pt" --model mlp --workers 2 --pipeline-parallel 2 \
  > "$tmp/infer-pp.log" 2>&1
expect "dagr infer --pipeline-parallel 2 exits 0" test $? -eq 0
cat "$tmp/infer-pp.log"
expect "dagr infer --pipeline-parallel 2: 2 stages" grep -q "^dagr infer: stage 1: layers 2..3" "$tmp/infer-pp.log"
expect "dagr infer --pipeline-parallel 2 predicts as one worker: $(grep ^accuracy "$tmp/infer.log" | cut -d'(' -f2)" \
  test "$(grep ^accuracy "$tmp/infer-pp.log")" = "$(grep ^accuracy "$tmp/infer.log")"

# Dense checkpoints: the run's folder without its last checkpoint (step 40)
# holds the one of step 20; resumed from it, to step 40.
cp -r "$tmp/p2" "$tmp/part"
rm "$tmp/part/$(ls "$tmp/part" | grep '^checkpoint-' | sort | tail -1)"
expect "the step-20 checkpoint is there" test -f "$tmp/part/checkpoint-000001-000000001280.dagr"
run part "${pp[@]}" --resume
expect "resumed at step 20" grep -q "continuing at epoch 1, sample 1280 of it (step 20)" "$tmp/part.log"
diff=$("$compare_models" mlp "$tmp/p2/model.pt" "$tmp/part/model.pt" 0)
expect "resumed: bitwise the uninterrupted run ($diff)" test $? -eq 0

# Pipeline × tensor parallelism: the deep-mlp (hidden 256: stage 0 holds one
# Linear → ReLU → Linear run, stage 1 three) in 2 stages of 2 tensor ranks each.
run_pt() { local out=$1; shift; timeout 120 "$dagr" train --workers 4 --pipeline-parallel 2 --tensor-parallel 2 \
             --micro-batches 4 --model deep-mlp --hidden 256 --batch-size 64 --epochs 1 --max-steps 80 --lr 0.001 \
             --checkpoint-every 40 --out "$tmp/$out" "$@" > "$tmp/$out.log" 2>&1; }
run_pt pt
expect "P × T = 2 × 2: the run succeeds" test $? -eq 0
cat "$tmp/pt.log"
expect "P × T = 2 × 2: the layout line" grep -q "(pipeline-parallel 2 × tensor-parallel 2 × data-parallel 1)" "$tmp/pt.log"
expect "P × T = 2 × 2: stage 0 splits its run" \
  grep -q "^dagr train: stage 0: .*, its 1 Linear → ReLU → Linear runs split over 2 ranks" "$tmp/pt.log"
expect "P × T = 2 × 2: stage 1 splits its three" \
  grep -q "^dagr train: stage 1: .*, its 3 Linear → ReLU → Linear runs split over 2 ranks" "$tmp/pt.log"
acc=$(sed -n 's/^Epoch 1: .*test accuracy \([0-9.]*\) .*/\1/p' "$tmp/pt.log")
expect "P × T = 2 × 2 learns (test accuracy $acc > 0.5 after 80 steps)" awk -v a="$acc" 'BEGIN { exit !(a > 0.5) }'
timeout 60 "$dagr" infer --checkpoint "$tmp/pt/model.pt" --model deep-mlp --workers 1 > "$tmp/infer-pt1.log" 2>&1
expect "P × T = 2 × 2: the gathered model.pt in one worker: accuracy $acc" grep -q "^accuracy $acc " "$tmp/infer-pt1.log"
timeout 60 "$dagr" infer --checkpoint "$tmp/pt/model.pt" --model deep-mlp --workers 4 --pipeline-parallel 2 \
  --tensor-parallel 2 > "$tmp/infer-pt.log" 2>&1
cat "$tmp/infer-pt.log"
expect "dagr infer --pipeline-parallel 2 --tensor-parallel 2 predicts as one worker" \
  test "$(grep ^accuracy "$tmp/infer-pt.log")" = "$(grep ^accuracy "$tmp/infer-pt1.log")"
cp -r "$tmp/pt" "$tmp/pt-part"
rm "$tmp/pt-part/$(ls "$tmp/pt-part" | grep '^checkpoint-' | sort | tail -1)"
run_pt pt-part --resume
expect "P × T = 2 × 2: resumed at step 40" grep -q "continuing at epoch 1, sample 2560 of it (step 40)" "$tmp/pt-part.log"
diff=$("$compare_models" deep-mlp "$tmp/pt/model.pt" "$tmp/pt-part/model.pt" 0)
expect "P × T = 2 × 2 resumed (Adam's moments gathered and split again): bitwise the uninterrupted run ($diff)" \
  test $? -eq 0

timeout 30 "$dagr" train --model deep-mlp --hidden 1024 --pipeline-parallel 2 --micro-batches 4 --schedule-pp gpipe \
  --print-schedule > "$tmp/schedule.log" 2>&1
expect "--print-schedule exits 0" test $? -eq 0
cat "$tmp/schedule.log"
expect "--print-schedule: the stages" grep -q "^stage 1: layers 9..17 of deep-mlp, 4208650 parameters" "$tmp/schedule.log"
expect "--print-schedule: the picture" grep -q "^rank 1  .  F0 F1 F2 F3 B0 B0 B1 B1 B2 B2 B3 B3" "$tmp/schedule.log"
expect "--print-schedule: the bubble" grep -q "bubble 20.0 %" "$tmp/schedule.log"
# --depth 16 (the benchmark's deeper cut): L0 and 7 hidden layers on stage 0, 8 and the output on stage 1.
timeout 30 "$dagr" train --model deep-mlp --depth 16 --hidden 1024 --pipeline-parallel 2 --print-schedule \
  > "$tmp/schedule16.log" 2>&1
expect "--print-schedule --depth 16: the stages" \
  grep -q "^stage 1: layers 17..33 of deep-mlp, 8407050 parameters" "$tmp/schedule16.log"

bad "more micro-batches than the batch" --pipeline-parallel 2 --micro-batches 65 --batch-size 64
bad "more stages than layers" --pipeline-parallel 5
bad "--max-restarts with a pipeline" --pipeline-parallel 2 --max-restarts 1
bad "--tensor-parallel with the 2-layer mlp's stages" --workers 4 --pipeline-parallel 2 --tensor-parallel 2
bad "--pipeline-parallel × --tensor-parallel not dividing the workers" --workers 6 --pipeline-parallel 2 \
  --tensor-parallel 2 --model deep-mlp
bad "--zero with a pipeline" --workers 2 --pipeline-parallel 2 --zero 1
bad "--comm-hook with a pipeline" --workers 2 --pipeline-parallel 2 --comm-hook fp16
bad "--elastic with a pipeline and tensor parallelism" --workers 4 --pipeline-parallel 2 --tensor-parallel 2 \
  --model deep-mlp --elastic
bad "--tensor-parallel wider than the deep-mlp" --workers 4 --pipeline-parallel 2 --tensor-parallel 4 --model deep-mlp \
  --hidden 3
bad "--depth with the mlp" --depth 4
bad "--depth 0" --model deep-mlp --depth 0
# bad_infer NAME FLAGS...: `dagr infer FLAGS` must be refused: exit 2 and one line.
bad_infer() {
  local name=$1; shift
  timeout 60 "$dagr" infer --checkpoint "$tmp/p2/model.pt" --model mlp "$@" > "$tmp/bad.log" 2>&1
  local rc=$?
  expect "infer $name: exit 2 (got $rc)" test "$rc" -eq 2
  expect "infer $name: one line" test "$(wc -l < "$tmp/bad.log")" -eq 1
  cat "$tmp/bad.log"
}
bad_infer "--pipeline-parallel 0" --pipeline-parallel 0
bad_infer "more stages than layers" --workers 5 --pipeline-parallel 5
bad_infer "--tensor-parallel with the 2-layer mlp's stages" --workers 4 --pipeline-parallel 2 --tensor-parallel 2
bad_infer "--pipeline-parallel × --tensor-parallel not dividing the workers" --workers 2 --pipeline-parallel 2 \
  --tensor-parallel 2
bad_infer "--depth with the mlp" --depth 4
# A deep-mlp checkpoint read at another depth: refused, never run with some of its layers.
for depth in 4 12; do
  timeout 60 "$dagr" infer --checkpoint "$tmp/pt/model.pt" --model deep-mlp --depth $depth > "$tmp/bad.log" 2>&1
  rc=$?
  expect "infer the depth-8 deep-mlp at --depth $depth: exit 2, one line (got $rc)" \
    test $rc -eq 2 -a "$(wc -l < "$tmp/bad.log")" -eq 1
  cat "$tmp/bad.log"
done
finish
