#!/usr/bin/env bash
# Real processes through `dagr launch`: collectives on 4 and 8 ranks (2 cores),
# mismatches, a killed rank, Ctrl-C, output prefixes, bad input, no leftovers.
# Usage: launch_tests.sh DAGR COMM_WORKER
set -uo pipefail
dagr=$1 worker=$2
source "$(dirname "$0")/testlib.sh"
leftovers() { ls /dev/shm 2>/dev/null | grep -c "^dagr-$1" ; }

for n in 1 4 8; do
  job=lt-coll-$n-$$
  timeout 300 "$dagr" launch -n "$n" --job-id "$job" -- "$worker" collectives > "$tmp/out" 2>&1
  expect "collectives on $n ranks" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq "$n"
  expect "no shared memory left after $n ranks" test "$(leftovers "$job")" -eq 0
done

timeout 60 "$dagr" launch -n 3 -- "$worker" mismatch > "$tmp/out" 2>&1
expect "mismatch is a MismatchError on every rank" test $? -eq 0 -a "$(grep -c 'caught MismatchError' "$tmp/out")" -eq 3

job=lt-die-$$
start=$(date +%s)
timeout 60 "$dagr" launch -n 3 --job-id "$job" -- "$worker" die > "$tmp/out" 2> "$tmp/err"
status=$?
expect "a killed rank fails the launch" test "$status" -ne 0 -a "$status" -ne 124
expect "the launcher names the rank and the signal" grep -q "rank 2 was killed by signal 9" "$tmp/err"
expect "the job ends within seconds" test $(( $(date +%s) - start )) -lt 20
expect "the launcher removes what the killed job left" test "$(leftovers "$job")" -eq 0

timeout 30 "$dagr" launch -n 2 -- sh -c 'echo "hello $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE"; echo oops >&2' > "$tmp/out" 2> "$tmp/err"
expect "output lines carry the rank" grep -qx "\[1\] hello 1 2 1 2" "$tmp/out"
expect "stderr lines carry the rank" grep -qx "\[0\] oops" "$tmp/err"

timeout 30 "$dagr" launch -n 2 -- sh -c 'exit 3' 2> "$tmp/err"
status=$?
expect "a failing worker's status is the launcher's" test "$status" -eq 3
expect "the failure is one line naming the rank" grep -q "rank [01] exited with status 3" "$tmp/err"

"$dagr" launch -n 2 -- sh -c 'echo $$ > "$0/pid.$RANK"; exec sleep 30' "$tmp" & pid=$!
sleep 1; kill -INT "$pid"; start=$(date +%s); wait "$pid"; status=$?
expect "Ctrl-C stops the job" test "$status" -eq 130 -a $(( $(date +%s) - start )) -lt 10
alive() { kill -0 "$(cat "$1")" 2>/dev/null; }
none_survive() { test -s "$tmp/pid.0" -a -s "$tmp/pid.1" && ! alive "$tmp/pid.0" && ! alive "$tmp/pid.1"; }
expect "no worker survives Ctrl-C" none_survive

timeout 10 "$dagr" launch -n 0 -- true 2> "$tmp/err"
expect "zero workers is rejected" test $? -ne 0 -a -s "$tmp/err"
timeout 10 "$dagr" launch -n 2 -- /nonexistent/program 2> "$tmp/err"
expect "a missing program is a clear error" grep -q "cannot run /nonexistent/program" "$tmp/err"

timeout 120 "$dagr" bench allreduce -n 3 --max 1M --iters 5 --json > "$tmp/out"
expect "bench prints one correct JSON row per size" test $? -eq 0 -a "$(grep -c '"correct":true' "$tmp/out")" -eq 18
expect "bench JSON has the nccl-tests keys" grep -q '"algbw":.*"busbw":.*"bytes":.*"count":.*"time_us":' "$tmp/out"
for c in allgather broadcast reduce_scatter; do
  timeout 120 "$dagr" bench "$c" -n 4 --min 1K --max 4M --iters 3 > "$tmp/out"
  expect "bench $c table is correct on 4 ranks" test $? -eq 0 -a "$(grep -c ' yes$' "$tmp/out")" -eq 13
done
timeout 120 "$dagr" bench linear -n 2 --features 515 --batch 7 --iters 3 > "$tmp/out" 2>&1
expect "bench linear compares dense and tensor-parallel" test $? -eq 0 -a "$(grep -c 'speed-up' "$tmp/out")" -eq 2
timeout 10 "$dagr" bench allreduce --max 12Q 2> "$tmp/err"
expect "a bad size is rejected" grep -q "not a size" "$tmp/err"

finish
