#!/usr/bin/env bash
# `dagr train` end to end on the real Fashion-MNIST: a short run reaches 85 %,
# the default run 88 %; the model and metrics are written; bad data sets fail
# with one clear line and a non-zero exit. Usage: train_tests.sh DAGR LOAD_MODEL
set -uo pipefail
dagr=$1 load_model=$2
source "$(dirname "$0")/testlib.sh"
accuracy() { sed -n 's/.*"test_accuracy":\([0-9.]*\).*"summary".*/\1/p; s/.*"summary":true.*"test_accuracy":\([0-9.]*\).*/\1/p' "$1/metrics.jsonl" | head -1; }
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

timeout 300 "$dagr" train --workers 2 --epochs 3 --out "$tmp/short" > "$tmp/out" 2>&1
expect "short MLP run succeeds" test $? -eq 0
cat "$tmp/out"
expect "every rank prints its line" test "$(grep -c '^Rank [01] training loss: .*, training accuracy: ' "$tmp/out")" -eq 6
expect "it ends with Training finished" grep -qx "Training finished!" "$tmp/out"
expect "the model is saved" test -s "$tmp/short/model.pt" -a ! -e "$tmp/short/model.pt.tmp"
expect "torch::load reads the saved model back" "$load_model" mlp "$tmp/short/model.pt"
expect "metrics hold one line per epoch and a summary" test "$(wc -l < "$tmp/short/metrics.jsonl")" -eq 4
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

finish
