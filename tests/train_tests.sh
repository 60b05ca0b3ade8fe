#!/usr/bin/env bash
# `dagr train` end to end on the real Fashion-MNIST: a short run reaches 85 %,
# the default run 88 %; the model and metrics are written; bad data sets and
# flags fail with one clear line and a non-zero exit; short runs with 2 workers
# and with tensor parallelism give the parameters of one process with the same
# global batch. Usage: train_tests.sh DAGR LOAD_MODEL COMPARE_MODELS
set -uo pipefail
dagr=$1 load_model=$2 compare_models=$3
source "$(dirname "$0")/testlib.sh"
accuracy() { sed -n 's/.*"test_accuracy":\([0-9.]*\).*"summary".*/\1/p; s/.*"summary":true.*"test_accuracy":\([0-9.]*\).*/\1/p' "$1/metrics.jsonl" | head -1; }
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

timeout 300 "$dagr" train --workers 2 --epochs 3 --eval-every 300 --out "$tmp/short" > "$tmp/out" 2>&1
expect "short MLP run succeeds" test $? -eq 0
cat "$tmp/out"
expect "every rank prints its line" test "$(grep -c '^Rank [01] training loss: .*, training accuracy: ' "$tmp/out")" -eq 6
expect "it ends with Training finished" grep -qx "Training finished!" "$tmp/out"
expect "the model is saved" test -s "$tmp/short/model.pt" -a ! -e "$tmp/short/model.pt.tmp"
expect "torch::load reads the saved model back" "$load_model" mlp "$tmp/short/model.pt"
expect "metrics hold a line per epoch, per --eval-every evaluation and a summary" \
  test "$(wc -l < "$tmp/short/metrics.jsonl")" -eq 8
# --eval-every 300 of 3 × 469 steps: steps 300, 600, 900 and 1200, in order in
# time with the epoch lines, each with a test accuracy; every epoch line has its
# own samples/s.
expect "--eval-every measures at steps 300, 600, 900, 1200" \
  test "$(sed -n 's/.*"step":\([0-9]*\),.*/\1/p' "$tmp/short/metrics.jsonl" | tr '\n' ' ')" = "300 600 900 1200 "
expect "every evaluation has an accuracy above 0.5" \
  test "$(grep -c '"step":.*"test_accuracy":0\.[5-9]' "$tmp/short/metrics.jsonl")" -eq 4
expect "the lines' seconds increase" awk -F'"seconds":' 'NF > 1 { split($2, v, /[,}]/); if (v[1] + 0 <= last) exit 1; last = v[1] + 0 }' \
  "$tmp/short/metrics.jsonl"
# Each rank's wait for the averages, gathered: the summary line names the
# rank that waits least and the one that waits most, and the metrics' summary
# holds one wait per rank.
expect "the summary gives the waits over the ranks" \
  grep -qE '^Blocked on gradient communication per step: [0-9.]+ ms \(rank [01]\) to [0-9.]+ ms \(rank [01]\) over 2 ranks;' "$tmp/out"
expect "the metrics' summary has one wait per rank" \
  grep -qE '"comm_wait_ms_by_rank":\[[0-9.e-]+,[0-9.e-]+\]' "$tmp/short/metrics.jsonl"
expect "every epoch line has its samples/s" test "$(grep -c '"epoch":.*"samples_per_second":[1-9]' "$tmp/short/metrics.jsonl")" -eq 3
expect "the progress shows the evaluations" test "$(grep -c '^Step [0-9]*: test accuracy 0\.[0-9]* (' "$tmp/out")" -eq 4
# Stopped at step 250 and resumed from the checkpoint of step 200: every
# evaluation's line is there once (200's in the checkpoint: it is measured
# before the checkpoint is taken), none at step 450 where --max-steps ends the
# run (the epoch line measures it), and the time axis goes on across the resume.
ev="--workers 1 --epochs 1 --max-steps 450 --checkpoint-every 100 --eval-every 100"
timeout 120 "$dagr" train $ev --stop-after-steps 250 --out "$tmp/ev" > /dev/null 2>&1
timeout 120 "$dagr" train $ev --resume --out "$tmp/ev" > /dev/null 2>&1
expect "resumed --eval-every run succeeds" test $? -eq 0
expect "resumed: evaluations at steps 100 to 400, once each" \
  test "$(sed -n 's/.*"step":\([0-9]*\),.*/\1/p' "$tmp/ev/metrics.jsonl" | tr '\n' ' ')" = "100 200 300 400 "
expect "resumed: the lines' seconds increase (the summary's is this process's wall time)" \
  awk -F'"seconds":' 'NF > 1 && !/"summary"/ { split($2, v, /[,}]/); if (v[1] + 0 <= last) exit 1; last = v[1] + 0 }' "$tmp/ev/metrics.jsonl"
acc=$(accuracy "$tmp/short")
expect "short run reaches 85% test accuracy (got $acc)" at_least "$acc" 0.85

timeout 600 "$dagr" train --out "$tmp/default" > "$tmp/out" 2>&1
expect "default run succeeds" test $? -eq 0
acc=$(accuracy "$tmp/default")
expect "default run reaches 88% test accuracy (got $acc)" at_least "$acc" 0.88

# dagr infer: the same accuracy sharded or not, and as dagr train measured.
trained=$(accuracy "$tmp/short")
for spec in "1 1" "2 2" "4 2" "3 3"; do
  set -- $spec
  timeout 120 "$dagr" infer --checkpoint "$tmp/short/model.pt" --workers "$1" --tensor-parallel "$2" > "$tmp/out" 2>&1
  got=$(sed -n 's/^accuracy \([0-9.]*\) .*/\1/p' "$tmp/out")
  expect "infer on $1 workers, tensor-parallel $2: accuracy $got = trained $trained" \
    awk -v a="$got" -v b="$trained" 'BEGIN { exit !(a != "" && a + 0 == b + 0) }'
done
expect "infer reports throughput and latency" grep -q "^throughput .* images/s; latency per batch of 256: median" "$tmp/out"

timeout 300 "$dagr" train --workers 4 --tensor-parallel 2 --epochs 2 --out "$tmp/tp" > "$tmp/out" 2>&1
expect "training with 2 x 2 (tensor x data parallel) succeeds" test $? -eq 0
expect "and reaches 85% (got $(accuracy "$tmp/tp"))" at_least "$(accuracy "$tmp/tp")" 0.85
expect "its gathered checkpoint loads as the dense MLP" "$load_model" mlp "$tmp/tp/model.pt"
timeout 60 "$dagr" train --workers 3 --tensor-parallel 2 > /dev/null 2> "$tmp/err"
expect "a tensor-parallel size that does not divide the workers is an error" \
  test $? -ne 0 -a "$(grep -c 'does not divide the 3 workers' "$tmp/err")" -ge 1
timeout 60 "$dagr" infer --checkpoint "$tmp/short/model.pt" --model cnn > /dev/null 2> "$tmp/err"
expect "a checkpoint that does not fit the model is an error" grep -q "not a dagr cnn checkpoint" "$tmp/err"
timeout 60 "$dagr" infer --checkpoint "$tmp/cnn-missing.pt" > /dev/null 2> "$tmp/err"
expect "a missing checkpoint is an error" grep -q "cnn-missing.pt: not a dagr mlp checkpoint" "$tmp/err"

timeout 300 "$dagr" train --model cnn --workers 2 --epochs 1 --max-steps 60 --out "$tmp/cnn" > "$tmp/out" 2>&1
expect "the CNN trains" test $? -eq 0 -a -s "$tmp/cnn/model.pt"
expect "and its model loads back" "$load_model" cnn "$tmp/cnn/model.pt"

# Secure aggregation: the gradients averaged as masked fixed point give the
# accuracy of plain DDP (the same run, within 0.5 point).
for mode in plain secure; do
  flags=(); [ "$mode" = secure ] && flags=(--secure-aggregation 8)
  timeout 300 "$dagr" train --workers 2 --epochs 1 --max-steps 150 "${flags[@]}" --out "$tmp/$mode" > "$tmp/$mode.out" 2>&1
done
expect "secure aggregation trains ($(accuracy "$tmp/secure") against plain $(accuracy "$tmp/plain"))" \
  awk -v a="$(accuracy "$tmp/secure")" -v b="$(accuracy "$tmp/plain")" 'BEGIN { d = a - b; exit !(a > 0.7 && d < 0.005 && d > -0.005) }'

# PowerSGD (--comm-hook powersgd, its 10 warm-up steps in fp16): it trains and
# sends fewer numbers; resumed from the run's checkpoint of step 40, the
# hook's state (Q, the mean error, the step) comes back and the run ends where
# the uninterrupted one did.
pg="--epochs 1 --max-steps 60 --batch-size 256 --checkpoint-every 20 --seed 5 --comm-hook powersgd --powersgd-rank 2 --powersgd-start-iter 10 --powersgd-uncompressed fp16"
timeout 120 "$dagr" train --workers 2 $pg --out "$tmp/pgfull" > "$tmp/out" 2>&1
expect "PowerSGD trains ($(accuracy "$tmp/pgfull"))" awk -v a="$(accuracy "$tmp/pgfull")" 'BEGIN { exit !(a > 0.6) }'
expect "and sends fewer numbers than the gradients" \
  awk '/^Communication hook powersgd:/ { sent = $4; dense = $(NF - 1) } END { exit !(sent > 0 && sent * 20 < dense) }' "$tmp/out"
mkdir "$tmp/pgpart" && cp "$tmp/pgfull/checkpoint-000001-000000020480.dagr" "$tmp/pgpart/"
timeout 120 "$dagr" train --workers 2 $pg --out "$tmp/pgpart" --resume > "$tmp/out" 2>&1
expect "PowerSGD resumed from step 40" grep -q "(step 40)" "$tmp/out"
diff=$("$compare_models" mlp "$tmp/pgfull/model.pt" "$tmp/pgpart/model.pt" 1e-4)
expect "PowerSGD stopped and resumed: the uninterrupted model within 1e-4 ($diff)" test $? -eq 0

timeout 300 "$dagr" launch -n 3 -- "$dagr" train --epochs 1 --max-steps 50 --out "$tmp/launched" > "$tmp/out" 2>&1
expect "dagr train runs as ranks of a launched job" test $? -eq 0 -a "$(grep -c 'Rank [012] training loss' "$tmp/out")" -eq 3

mkdir -p "$tmp/bad"
printf 'junk' > "$tmp/bad/train-images-idx3-ubyte"
cp /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz "$tmp/bad/"
timeout 60 "$dagr" train --workers 2 --dataset "$tmp/bad" > "$tmp/out" 2> "$tmp/err"
status=$?
expect "a malformed data set fails" test "$status" -ne 0
expect "naming the file and the problem" grep -q "train-images-idx3-ubyte: wrong magic" "$tmp/err"
timeout 60 "$dagr" train --workers 1 --dataset "$tmp/nowhere" > /dev/null 2> "$tmp/err"
expect "a missing data set fails clearly" test $? -ne 0 -a "$(grep -c "has no train-images" "$tmp/err")" -ge 1
timeout 60 "$dagr" train --epochs 0 > /dev/null 2> "$tmp/err"
expect "bad flags are rejected" test $? -ne 0 -a -s "$tmp/err"

# Bad values: one line naming the flag, exit 2, before any worker starts (so no rank's line).
one_line_exit_2() {  # NAME PATTERN ARGS...
  local name=$1 pattern=$2; shift 2
  timeout 60 "$dagr" train --workers 2 "$@" > "$tmp/out" 2> "$tmp/err"
  local status=$?
  expect "$name: exit 2 (got $status)" test "$status" -eq 2
  expect "$name: one line saying why" test "$(wc -l < "$tmp/err")" -eq 1 -a "$(grep -c -- "$pattern" "$tmp/err")" -eq 1
  expect "$name: no worker started" test ! -s "$tmp/out"
}
for lr in nan inf -0.1 0; do one_line_exit_2 "--lr $lr" "--lr must be a finite number above 0" "--lr=$lr"; done
one_line_exit_2 "--momentum nan" "--momentum must be" --momentum nan
one_line_exit_2 "--secure-aggregation nan" "clip must be a finite number" --secure-aggregation nan
one_line_exit_2 "--zero 3" "--zero" --zero 3
one_line_exit_2 "--zero 2 with --secure-aggregation" "use --zero 1 with it" --zero 2 --secure-aggregation 8
one_line_exit_2 "--zero 2 with --comm-hook" "--comm-hook needs --zero 1" --zero 2 --comm-hook fp16
one_line_exit_2 "--comm-hook with --secure-aggregation" "exclude each other" --comm-hook fp16 --secure-aggregation 8
one_line_exit_2 "--powersgd-uncompressed fp8" "--powersgd-uncompressed" --comm-hook powersgd --powersgd-uncompressed fp8
one_line_exit_2 "--powersgd-uncompressed without PowerSGD" "needs --comm-hook powersgd" --comm-hook fp16 --powersgd-uncompressed bf16
one_line_exit_2 "--eval-every with --mode ps" "does not take --eval-every" --mode ps --servers 1 --eval-every 5
one_line_exit_2 "--eval-every with --pipeline-parallel" "--eval-every cannot be combined" --pipeline-parallel 2 --eval-every 5
touch "$tmp/a-file"
one_line_exit_2 "--out naming a file" "not a folder" --out "$tmp/a-file"
one_line_exit_2 "--out under a file" "not a folder" --out "$tmp/a-file/sub"
mkdir -p "$tmp/readonly" && chmod 555 "$tmp/readonly"
if [ "$(id -u)" -ne 0 ]; then
  one_line_exit_2 "--out not writable" "cannot write there" --out "$tmp/readonly"
fi
one_line_exit_2 "--out not creatable" "not a folder" --out /proc/dagr-out
timeout 60 "$dagr" train --workers 2 --batch-size 40000 --out "$tmp/big" > /dev/null 2> "$tmp/err"
expect "a batch larger than each rank's share of the data set is refused" \
  test $? -ne 0 -a "$(grep -c -- "--batch-size 40000 is more than the 30000 samples each of the 2" "$tmp/err")" -ge 1

# A failed re-run into a folder leaves its model.pt and metrics.jsonl as they were.
cp "$tmp/short/metrics.jsonl" "$tmp/metrics.before"
timeout 60 "$dagr" train --workers 2 --epochs 1 --out "$tmp/short" --dataset "$tmp/bad" > /dev/null 2>&1
expect "a failed re-run fails" test $? -ne 0
expect "and leaves the old metrics.jsonl beside the old model.pt" cmp -s "$tmp/metrics.before" "$tmp/short/metrics.jsonl"
expect "and the old model still loads" "$load_model" mlp "$tmp/short/model.pt"

# End to end against a reference: every layout takes, at each step, the same
# global batch of 64 as one process (2 ranks × 32; tensor-parallel 2 × 64;
# 2 × 2 × 32) and must end with the same parameters after 40 SGD steps, within
# float rounding (measured: below 1e-6). All start from one checkpoint written
# by the process after its first step (a checkpoint is dense, so any layout
# resumes it; tensor-parallel layers draw their initial weights differently).
# Every rank reading rank 0's shard (planted) differs by 0.2; DDP summing
# instead of averaging (planted) fails the runs (DDP's step check, whose numbers
# ride with the gradients, sees sums). Tensor parallelism's input-gradient
# allreduce never runs here (the images need no gradient): tp_tests cover it.
same="--epochs 1 --max-steps 40 --optimizer sgd --lr 0.05 --momentum 0.9 --schedule constant --seed 7"
timeout 120 "$dagr" train --workers 1 --batch-size 64 $same --checkpoint-every 1 --stop-after-steps 1 \
  --out "$tmp/start" > /dev/null 2>&1
expect "the common start (1 worker, 1 step) is written" test $? -eq 0
for spec in "1 1 64" "2 1 32" "2 2 64" "4 2 32"; do
  set -- $spec
  cp -r "$tmp/start" "$tmp/cmp$1$2"
  timeout 120 "$dagr" train --workers "$1" --tensor-parallel "$2" --batch-size "$3" $same --resume \
    --out "$tmp/cmp$1$2" > /dev/null 2>&1
  expect "$1 workers, tensor-parallel $2, batch $3 per rank: runs" test $? -eq 0
  [ "$1$2" = 11 ] && continue
  diff=$("$compare_models" mlp "$tmp/cmp11/model.pt" "$tmp/cmp$1$2/model.pt" 1e-5)
  expect "$1 workers, tensor-parallel $2: the reference's parameters within 1e-5 ($diff)" test $? -eq 0
done
# ZeRO-2 (--zero 2) from the same start: steps 2-20 with the optimizer sharded
# and the gradients reduce-scattered, a dense checkpoint at step 20, resumed
# without --zero to step 40: bitwise the plain 2-worker run above (the same
# sums in the same order, elementwise optimizer steps).
cp -r "$tmp/start" "$tmp/zero"
timeout 120 "$dagr" train --workers 2 --batch-size 32 $same --resume --zero 2 --checkpoint-every 20 \
  --stop-after-steps 20 --out "$tmp/zero" > "$tmp/out" 2>&1
expect "--zero 2 runs and stops after step 20" test $? -eq 0
expect "and each rank holds half the optimizer state" \
  grep -q "ZeRO-2 optimizer state: .* KiB on the largest rank, 0.50[0-2][0-9] of the" "$tmp/out"
timeout 120 "$dagr" train --workers 2 --batch-size 32 $same --resume --out "$tmp/zero" > /dev/null 2>&1
expect "its dense checkpoint resumes without --zero" test $? -eq 0
diff=$("$compare_models" mlp "$tmp/cmp21/model.pt" "$tmp/zero/model.pt" 0)
expect "--zero 2, then plain DDP: bitwise the plain DDP run ($diff)" test $? -eq 0
# Checkpoints and --resume. Same workers: interrupted twice (resumed from a
# mid-epoch checkpoint each time, the newest one corrupted before the second
# resume) the run ends with the very model of the uninterrupted run.
ck="--epochs 2 --batch-size 256 --checkpoint-every 50 --seed 5"
timeout 120 "$dagr" train --workers 2 $ck --out "$tmp/full" > /dev/null 2>&1
expect "uninterrupted run with checkpoints succeeds" test $? -eq 0
expect "it keeps two checkpoints" test "$(ls "$tmp/full" | grep -c '^checkpoint-.*\.dagr$')" -eq 2
timeout 120 "$dagr" train --workers 2 $ck --out "$tmp/part" --stop-after-steps 77 > "$tmp/out" 2>&1
expect "a run stopped after step 77 stops" grep -q "stopped after step 77" "$tmp/out"
expect "without writing model.pt" test ! -e "$tmp/part/model.pt"
timeout 120 "$dagr" train --workers 2 $ck --out "$tmp/part" --resume --stop-after-steps 170 > "$tmp/out" 2>&1
expect "resuming continues at step 50" grep -q "continuing at epoch 1, sample 25600 of it (step 50)" "$tmp/out"
newest=$(ls "$tmp/part"/checkpoint-*.dagr | tail -1)
printf '\x55' | dd of="$newest" bs=1 seek=200 conv=notrunc 2> /dev/null
timeout 120 "$dagr" train --workers 2 $ck --out "$tmp/part" --resume > "$tmp/out" 2> "$tmp/err"
expect "the resumed run finishes" test $? -eq 0 -a -s "$tmp/part/model.pt"
expect "the corrupt newest checkpoint is skipped, named in a warning" grep -q "warning: skipping checkpoint $newest" "$tmp/err"
expect "and the one before is used (end of epoch 1)" grep -q "continuing at epoch 2, sample 0 of it (step 118)" "$tmp/out"
diff=$("$compare_models" mlp "$tmp/full/model.pt" "$tmp/part/model.pt" 0)
expect "stopped twice and resumed: bitwise the uninterrupted model ($diff)" test $? -eq 0
expect "metrics hold each epoch once and a summary" test "$(wc -l < "$tmp/part/metrics.jsonl")" -eq 3
# Resuming a run that had finished takes no step, and says so.
timeout 120 "$dagr" train --workers 2 --max-steps 20 --checkpoint-every 10 --out "$tmp/done" > /dev/null 2>&1
timeout 120 "$dagr" train --workers 2 --max-steps 20 --checkpoint-every 10 --out "$tmp/done" --resume > "$tmp/out" 2>&1
expect "resuming a finished run succeeds" test $? -eq 0
expect "its summary says it took no step" grep -q "no training step in this run" "$tmp/out"
expect "and its metrics give no first-step time" grep -q '"first_step_seconds":null' "$tmp/done/metrics.jsonl"
# Resuming with another optimizer would drop the checkpoint's state (Adam's
# moments): refused, one message, exit 2, with or without --zero.
cp -r "$tmp/full" "$tmp/otheropt"
for z in "" "--zero 1"; do
  timeout 120 "$dagr" train --workers 2 $ck $z --optimizer sgd --out "$tmp/otheropt" --resume > "$tmp/out" 2>&1
  expect "resuming Adam's checkpoint with SGD ${z:+($z) }is refused (exit 2)" test $? -eq 2
  expect "naming both optimizers ${z:+($z)}" grep -q "holds Adam's optimizer state and this run's optimizer is SGD" "$tmp/out"
done

tp="--epochs 1 --batch-size 256 --checkpoint-every 40 --tensor-parallel 2 --seed 5"
timeout 120 "$dagr" train --workers 2 $tp --out "$tmp/tpfull" > /dev/null 2>&1
timeout 120 "$dagr" train --workers 2 $tp --out "$tmp/tppart" --stop-after-steps 100 > /dev/null 2>&1
timeout 120 "$dagr" train --workers 2 $tp --out "$tmp/tppart" --resume > /dev/null 2>&1
diff=$("$compare_models" mlp "$tmp/tpfull/model.pt" "$tmp/tppart/model.pt" 0)
expect "tensor-parallel: stopped and resumed, bitwise the uninterrupted model ($diff)" test $? -eq 0

# Another number of workers (the same global batch): it goes on from the same
# epoch and sample; the accuracy is the uninterrupted run's within 0.5 point.
timeout 120 "$dagr" train --workers 2 --epochs 2 --checkpoint-every 250 --out "$tmp/w2" > /dev/null 2>&1
timeout 120 "$dagr" train --workers 2 --epochs 2 --checkpoint-every 250 --out "$tmp/w21" --stop-after-steps 600 \
  > /dev/null 2>&1
timeout 120 "$dagr" train --workers 1 --batch-size 128 --epochs 2 --out "$tmp/w21" --resume > "$tmp/out" 2>&1
expect "resumed on 1 worker from the checkpoint of 2 (epoch 2, sample 3968)" \
  grep -q "continuing at epoch 2, sample 3968 of it (step 500)" "$tmp/out"
a=$(accuracy "$tmp/w2") b=$(accuracy "$tmp/w21")
expect "and reaches the uninterrupted accuracy within 0.5 point ($b vs $a)" \
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 0.005) }'

timeout 60 "$dagr" train --workers 1 --epochs 1 --max-steps 5 --out "$tmp/empty" --resume > "$tmp/out" 2>&1
expect "--resume with no checkpoint starts from the beginning" grep -q "no checkpoint in $tmp/empty, starting" "$tmp/out"

# --balance-batch with rank 1's core shared with a busy loop (the job held to
# CPUs 0 and 1, so rank 1 is bound to CPU 1): a split that gives rank 0 more
# is kept (240 steps: a trial undone by noise costs three periods), and the
# model trains as well. Its checkpoints hold the global position as an
# equal split's do: an unbalanced run resumes from it at the same sample.
timeout 300 taskset -c 1 sh -c 'while :; do :; done' < /dev/null > /dev/null 2>&1 & hog=$!
timeout 120 taskset -c 0,1 "$dagr" train --workers 2 --model cnn --max-steps 240 --optimizer sgd --lr 0.1 \
  --schedule constant --balance-batch --out "$tmp/balance" > "$tmp/out" 2>&1
expect "--balance-batch with rank 1's core shared: the run succeeds" test $? -eq 0
cat "$tmp/out"
timeout 120 taskset -c 0,1 "$dagr" train --workers 2 --epochs 1 --balance-batch --checkpoint-every 200 \
  --stop-after-steps 300 --out "$tmp/balance-mlp" > /dev/null 2>&1
kill $hog
share=$(sed -n 's/.*"batch_share_by_rank":\[\([0-9.e-]*\),.*/\1/p' "$tmp/balance/metrics.jsonl")
expect "rank 0 takes 55 % or more of each step's samples, in a split kept (${share:-none})" at_least "${share:-0}" 0.549
expect "the summary says the split" \
  grep -qE '^Batch split by measured speed \(--balance-batch\): rank 0 [0-9.]+ %, rank 1 [0-9.]+ % of each step' "$tmp/out"
expect "and the CNN trains to 0.75 in 240 steps ($(accuracy "$tmp/balance"))" at_least "$(accuracy "$tmp/balance")" 0.75
timeout 120 "$dagr" train --workers 2 --epochs 1 --out "$tmp/balance-mlp" --resume > "$tmp/out" 2>&1
expect "a balanced run's checkpoint resumes unbalanced at its sample" \
  grep -q "continuing at epoch 1, sample 25600 of it (step 200)" "$tmp/out"
expect "and trains to 0.8 ($(accuracy "$tmp/balance-mlp"))" at_least "$(accuracy "$tmp/balance-mlp")" 0.8
bad "--balance-batch with tensor parallelism" --workers 2 --tensor-parallel 2 --balance-batch
bad "--balance-batch with DP-SGD" --workers 2 --dp-clip 1 --dp-noise 1 --balance-batch
bad "--min-workers above --workers" --workers 2 --elastic --min-workers 3

finish
