#!/usr/bin/env bash
# `dagr train --mode ps`, short runs on the real Fashion-MNIST:
#  - asynchronous, 1 server + 3 workers, --staleness 2, worker 1 slowed down
#    (DAGR_PS_SLOW_WORKER) and worker 2 killed with SIGKILL mid-run
#    (DAGR_PS_KILL_WORKER): the job ends with exit 0, the server says it
#    dropped worker 2, the other workers make all their 60 steps, every
#    logged push is at most 2 updates stale, the loss
#    falls and the test accuracy clears a floor; model.pt loads in dagr infer
#    and gives the accuracy the run reported;
#  - bad flags: one line, exit 2.
# (Synchronous mode against DDP: tests/ps_tests.cc, with ranks as threads.)
# Usage: ps_train_tests.sh DAGR
set -uo pipefail
dagr=$1
source "$(dirname "$0")/testlib.sh"
common=(--batch-size 128 --epochs 1 --optimizer adam --lr 0.003 --schedule constant --seed 3)

DAGR_PS_SLOW_WORKER=1:25 DAGR_PS_KILL_WORKER=2:15 timeout 120 "$dagr" train --mode ps --servers 1 --async \
  --staleness 2 --workers 4 --max-steps 60 "${common[@]}" --out "$tmp/async" > "$tmp/async.log" 2>&1
expect "async run with a killed worker exits 0 (got $?)" test $? -eq 0
cat "$tmp/async.log"
expect "the server dropped worker 2" grep -q "^dagr train: worker 2 lost" "$tmp/async.log"
for w in 0 1; do
  pushes=$(awk -F, -v w=$w '$1 == w' "$tmp/async/staleness.csv" | wc -l)
  expect "worker $w carried on to its last step: 60 pushes logged (got $pushes)" test "$pushes" -eq 60
done
max=$(tail -n +2 "$tmp/async/staleness.csv" | cut -d, -f3 | sort -n | tail -1)
expect "every push at most 2 updates stale (max $max)" test "$max" -le 2
expect "the slow worker made pushes stale (max $max)" test "$max" -ge 1
loss=$(sed -n 's/^Epoch 1: global training loss \([0-9.]*\),.*/\1/p' "$tmp/async.log")
expect "training loss fell from ln 10 = 2.30 to below 1.5 (got $loss)" awk -v l="$loss" 'BEGIN { exit !(l != "" && l < 1.5) }'
acc=$(sed -n 's/^Summary: .* test accuracy \([0-9.]*\),.*/\1/p' "$tmp/async.log")
expect "test accuracy at least 0.70 (got $acc)" awk -v a="$acc" 'BEGIN { exit !(a != "" && a >= 0.70) }'
timeout 60 "$dagr" infer --checkpoint "$tmp/async/model.pt" --workers 1 > "$tmp/infer.log" 2>&1
got=$(sed -n 's/^accuracy \([0-9.]*\) .*/\1/p' "$tmp/infer.log")
expect "dagr infer loads the dense model.pt: accuracy $got = reported $acc" \
  awk -v a="$got" -v b="$acc" 'BEGIN { exit !(a != "" && a + 0 == b + 0) }'

bad "--servers equal to --workers" --mode ps --servers 2 --workers 2
bad "--staleness without --async" --mode ps --servers 1 --workers 2 --staleness 3
bad "--async without --staleness" --mode ps --servers 1 --workers 2 --async
finish
