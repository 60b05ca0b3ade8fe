#!/usr/bin/env bash
# Real processes through `dagr launch`: collectives on 4 and 8 ranks (2 cores),
# mismatches, a killed rank and a stopped one (named right), elastic losses, restarts, live
# output, Ctrl-C, output prefixes, bad input, no leftovers.
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

# Elastic: a rank that fails after the others finished well is a loss, not the job's failure, in whichever
# order the exits are reaped; a rank lost before the whole group joined fails the attempt, named as the cause.
timeout 60 "$dagr" launch -n 3 --elastic -- "$worker" exit-late > "$tmp/out" 2> "$tmp/err"
status=$?
expect "elastic: a rank failing after the others finished well leaves the job a success (status $status)" test "$status" -eq 0
expect "elastic: that rank is reported lost" grep -q "rank 2 exited with status 3; 2 workers carry on" "$tmp/err"
job=lt-unjoined-$$
DAGR_TIMEOUT_S=3 timeout 60 "$dagr" launch -n 3 --elastic --job-id "$job" -- "$worker" die-unjoined > "$tmp/out" 2> "$tmp/err"
status=$?
expect "elastic: a rank lost before the group joined fails the job (status $status)" test "$status" -ne 0 -a "$status" -ne 124
expect "elastic: nobody is said to carry on" sh -c '! grep -q "carry on" "$0"' "$tmp/err"
expect "elastic: the lost rank is named as the cause" grep -q "rank 2 was killed by signal 9 (Killed); stopped all workers" "$tmp/err"
expect "elastic: nothing of it left in /dev/shm" test "$(leftovers "$job")" -eq 0

timeout 30 "$dagr" launch -n 2 -- sh -c 'echo "hello $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE"; echo oops >&2' > "$tmp/out" 2> "$tmp/err"
expect "output lines carry the rank" grep -qx "\[1\] hello 1 2 1 2" "$tmp/out"
expect "stderr lines carry the rank" grep -qx "\[0\] oops" "$tmp/err"

# A bad DAGR_TIMEOUT_S is the job's error, found before any worker starts:
# one line, exit 2, no rank blamed.
for bad in abc 0 ""; do
  DAGR_TIMEOUT_S=$bad timeout 30 "$dagr" launch -n 2 -- sh -c 'echo started' > "$tmp/out" 2> "$tmp/err"
  status=$?
  expect "DAGR_TIMEOUT_S='$bad' is refused before any worker starts (exit 2, one line)" \
    test "$status" -eq 2 -a ! -s "$tmp/out" -a "$(wc -l < "$tmp/err")" -eq 1
  expect "... naming the variable, not a rank" grep -q "DAGR_TIMEOUT_S.*\(not a whole number\|is empty\)" "$tmp/err"
done
timeout 30 "$dagr" launch -n 2 -- sh -c 'exit 3' 2> "$tmp/err"
status=$?
expect "a failing worker's status is the launcher's" test "$status" -eq 3
expect "the failure is one line naming the rank" grep -q "rank [01] exited with status 3" "$tmp/err"

"$dagr" launch -n 2 -- sh -c 'echo $$ > "$0/pid.$RANK"; exec sleep 30' "$tmp" & pid=$!
for _ in $(seq 100); do [ -s "$tmp/pid.0" ] && [ -s "$tmp/pid.1" ] && break; sleep 0.1; done
kill -INT "$pid"; start=$(date +%s); wait "$pid"; status=$?
expect "Ctrl-C stops the job" test "$status" -eq 130 -a $(( $(date +%s) - start )) -lt 10
alive() { kill -0 "$(cat "$1")" 2>/dev/null; }
none_survive() { test -s "$tmp/pid.0" -a -s "$tmp/pid.1" && ! alive "$tmp/pid.0" && ! alive "$tmp/pid.1"; }
expect "no worker survives Ctrl-C" none_survive

# The cause, not the first exit: rank 1 is killed, the others abort on their
# uncaught PeerError (and may be reaped first); the launcher names rank 1 every time.
named=0
for trial in $(seq 20); do
  timeout 60 "$dagr" launch -n 3 -- sh -c '[ "$RANK" = 1 ] && (sleep 0.$((RANDOM % 5)); kill -9 $$) & exec "$0" steps 30' "$worker" \
    > /dev/null 2> "$tmp/err"
  tail -1 "$tmp/err" | grep -q "rank 1 was killed by signal 9" && named=$((named + 1))
done
expect "a killed rank 1 is named 20 times out of 20 ($named)" test "$named" -eq 20

# waits until $1 holds $2 lines matching $3 (at most 30 s)
wait_lines() { for _ in $(seq 300); do [ "$(grep -c "$3" "$1" 2>/dev/null)" -ge "$2" ] && return 0; sleep 0.1; done; return 1; }
"$dagr" launch -n 3 -- sh -c 'echo $$ > "$0/kill.$RANK"; exec "$1" steps 60' "$tmp" "$worker" > "$tmp/out" 2> "$tmp/err" & pid=$!
wait_lines "$tmp/out" 3 stepping; kill -9 "$(cat "$tmp/kill.1")"; wait "$pid"
expect "the survivors' own errors reach the user" test "$(grep -c "rank 1 (pid [0-9]*) died" "$tmp/err")" -eq 2

# A stopped rank is silent, not dead: the others time out and name it, and so does the launcher.
"$dagr" launch -n 3 --timeout 2 -- sh -c 'echo $$ > "$0/stop.$RANK"; exec "$1" steps 60' "$tmp" "$worker" \
  > "$tmp/out" 2> "$tmp/err" & pid=$!
wait_lines "$tmp/out" 3 stepping; kill -STOP "$(cat "$tmp/stop.1")"; start=$(date +%s)
wait "$pid"; status=$?
expect "a stopped rank fails the launch within seconds" test "$status" -ne 0 -a $(( $(date +%s) - start )) -lt 20
expect "the launcher names the stopped rank" grep -q "rank 1 stopped responding: ranks 0, 2 timed out waiting" "$tmp/err"
expect "the survivors' errors name the stopped rank" test "$(grep -c "rank 1 (pid [0-9]*).* stopped responding\|rank 1 (pid [0-9]*) went silent" "$tmp/err")" -ge 2
expect "the stopped rank does not outlive the launch" sh -c '! kill -0 "$(cat "$0/stop.1")" 2>/dev/null' "$tmp"

# Output is live (a pseudo-terminal for stdout), '\r' lines stay lines, partial lines are kept.
"$dagr" launch -n 1 -- "$worker" print-sleep-print > "$tmp/live" & pid=$!
wait_lines "$tmp/live" 1 "first line"
expect "a worker's line is shown while it still runs" sh -c '! grep -q "second line" "$0" && kill -0 "$1"' "$tmp/live" "$pid"
wait "$pid"
expect "and the next one after" grep -qx "\[0\] second line" "$tmp/live"
timeout 30 "$dagr" launch -n 2 -- sh -c 'if [ $RANK = 0 ]; then printf "bar 1\rbar 2\r"; sleep 1; printf "tail"; else sleep 0.5; echo line; fi' \
  > "$tmp/out"
expect "progress lines are relayed as such" grep -q "\[0\] bar 1.\[0\] bar 2" "$tmp/out"
expect "another rank's line starts on a line of its own" grep -qx "\[1\] line" "$tmp/out"
expect "a partial last line is kept" grep -qx "\[0\] tail" "$tmp/out"

# Restarts: the whole group again, with DAGR_RESTART_COUNT, one line each.
timeout 60 "$dagr" launch -n 2 --max-restarts 2 -- sh -c \
  '[ "$DAGR_RESTART_COUNT" = 0 ] && [ "$RANK" = 1 ] && kill -9 $$; echo "done $DAGR_RESTART_COUNT $TORCHELASTIC_RESTART_COUNT"' \
  > "$tmp/out" 2> "$tmp/err"
expect "a restarted job succeeds" test $? -eq 0 -a "$(grep -c "done 1 1" "$tmp/out")" -eq 2
expect "the restart is one line naming the cause" grep -q "restart 1 of 2 after rank 1 was killed by signal 9" "$tmp/err"
timeout 60 "$dagr" launch -n 2 --max-restarts 2 -- sh -c 'exit 4' > /dev/null 2> "$tmp/err"
expect "restarts run out" test $? -eq 4 -a "$(grep -c "restart . of 2" "$tmp/err")" -eq 2

# Standby: spares started once the group has joined wait in
# wait_until_started(); a restart hands them the ranks instead of starting
# afresh (and, with --cores-per-worker, their CPUs: rank r on the r-th this
# shell may use, where there are 2). Spares not needed are killed at the end;
# none is left behind.
allowed=()  # the CPUs this shell may use, in order ("0-2,5" -> 0 1 2 5)
for part in $(taskset -pc $$ | sed 's/.*: //; s/,/ /g'); do
  allowed+=($(seq "${part%-*}" "${part#*-}"))
done
DAGR_LOG_LEVEL=info timeout 60 "$dagr" launch -n 2 --max-restarts 1 --standby --cores-per-worker 1 -- "$worker" standby die \
  > "$tmp/out" 2> "$tmp/err"
expect "a job restarted from standby spares succeeds" test $? -eq 0 -a "$(grep -c "attempt 1 pid" "$tmp/out")" -eq 2
for r in 0 1; do
  spare=$(sed -n "s/.*attempt 1: rank $r of 2 is standby pid \([0-9]*\).*/\1/p" "$tmp/err")
  cpu=${allowed[$r]}; [ "${#allowed[@]}" -ge 2 ] || cpu=${allowed[0]}
  expect "rank $r of the restart is a spare (pid ${spare:-none}) that learned its rank and its CPU ($cpu)" \
    grep -qx "\[$r\] rank $r attempt 1 pid ${spare:-none} cpus $cpu" "$tmp/out"
done
expect "spares start only after the group joined (each rank counts the launcher's children before it joins)" \
  sh -c '! grep -q "a spare was started before every rank joined" "$0"' "$tmp/err"
DAGR_LOG_LEVEL=info timeout 60 "$dagr" launch -n 2 --max-restarts 1 --standby -- "$worker" standby > "$tmp/out" 2> "$tmp/err"
expect "a job that needs no restart ends with its spares unused" \
  test $? -eq 0 -a "$(grep -c "attempt 0 pid" "$tmp/out")" -eq 2 -a "$(grep -c "standby pid .* started" "$tmp/err")" -eq 2
expect "no spare is left running" sh -c '! pgrep -x dagr-standby'
# A spare that dies on its own while it waits is a warning (the next restart
# would start that rank afresh); spares the job itself ends are not.
timeout 60 "$dagr" launch -n 2 --max-restarts 1 --standby -- "$worker" standby linger > "$tmp/out" 2> "$tmp/err" &
launched=$!
spare=
for _ in $(seq 100); do  # a spare of this job: a child of the launcher, timeout's child
  spare=$(pgrep -x -P "$(pgrep -d, -P "$launched")" dagr-standby | head -1); [ -n "$spare" ] && break; sleep 0.1
done
[ -n "$spare" ] && kill -9 "$spare"
wait "$launched"
expect "a spare killed while it waits (pid ${spare:-none}) is a warning, and the job goes on" \
  test $? -eq 0 -a -n "$spare" -a "$(grep -c "standby pid $spare was killed by signal 9 (Killed) while it waited; a restart will start that rank afresh" "$tmp/err")" -eq 1
expect "the other spare, ended with the job, is no warning" test "$(grep -c "standby pid" "$tmp/err")" -eq 1

# --cores-per-worker K: rank r on K CPUs of its own, the (r·K)-th on of those
# the launcher may use; with fewer than workers × K, nobody is bound.
n=$(nproc)
timeout 60 "$dagr" launch -n "$n" --cores-per-worker 1 -- sh -c 'taskset -pc $$ | sed "s/.*: //"' > "$tmp/out" 2>&1
expect "$n workers on $n CPUs: each bound to one of its own" \
  test "$(awk '$2 ~ /^[0-9]+$/ { print $2 }' "$tmp/out" | sort -u | wc -l)" -eq "$n"
timeout 60 "$dagr" launch -n "$n" --cores-per-worker 1 -- sh -c 'echo "$DAGR_JOB_CPUS"' > "$tmp/out" 2>&1
expect "and each is told the job's $n CPUs (DAGR_JOB_CPUS), as its own affinity says 1" \
  test "$(grep -c "] $n\$" "$tmp/out")" -eq "$n"
timeout 60 "$dagr" launch -n "$((n + 1))" --cores-per-worker 1 -- sh -c 'taskset -pc $$ | sed "s/.*: //"' > "$tmp/out" 2>&1
expect "$((n + 1)) workers on $n CPUs: none bound" \
  test "$(grep -c "] $(taskset -pc $$ | sed 's/.*: //')\$" "$tmp/out")" -eq "$((n + 1))"
timeout 60 "$dagr" launch -n 1 -- sh -c 'taskset -pc $$ | sed "s/.*: //"' > "$tmp/out" 2>&1
expect "without --cores-per-worker, unbound" grep -qx "\[0\] $(taskset -pc $$ | sed 's/.*: //')" "$tmp/out"

# Secure aggregation (real processes): the masked fixed-point sum is exact, no
# rank's plain contribution is ever in the shared memory, a wrong key is caught.
for n in 2 3 4; do
  timeout 60 "$dagr" launch -n $n -- "$worker" secure > "$tmp/out" 2> "$tmp/err"
  expect "secure allreduce on $n ranks equals the fixed-point sum, bitwise" \
    test $? -eq 0 -a "$(grep -c "secure sums exact" "$tmp/out")" -eq $n
done
timeout 60 "$dagr" launch -n 3 -- "$worker" secure-scan > "$tmp/out" 2> "$tmp/err"
expect "a secure allreduce leaves no rank's plain contribution in shared memory (a plain one does)" \
  grep -q "no plain contribution in shared memory (plain: found)" "$tmp/out"
timeout 60 "$dagr" launch -n 3 -- "$worker" secure-wrong-key > "$tmp/out" 2> "$tmp/err"
expect "a rank with the wrong key: every rank reports it, none uses the result" \
  test $? -eq 0 -a "$(grep -c "wrong key detected" "$tmp/out")" -eq 3

# A full /dev/shm (a private 2 MiB one here): one clear error when the group
# forms, saying what it needs, never a SIGBUS in the middle of a collective.
timeout 60 unshare -m sh -c 'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$0" launch -n 4 -- "$1" collectives' \
  "$dagr" "$worker" > "$tmp/out" 2> "$tmp/err"
status=$?
expect "a full /dev/shm fails the job ($status)" test "$status" -ne 0 -a "$status" -ne 124
expect "a full /dev/shm is one clear error naming what is needed" grep -q "not enough shared memory: this group needs [0-9]* MiB in /dev/shm.* but only [0-9]* MiB are free" "$tmp/err"
expect "a full /dev/shm is no bus error" sh -c '! grep -qi "bus error\|signal 7" "$0"' "$tmp/err"

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
timeout 120 "$dagr" bench maxpool --batch 3 --iters 3 > "$tmp/out" 2>&1
expect "bench maxpool times both poolings both ways" test $? -eq 0 -a "$(grep -c 'torch .* dagr .* speed-up' "$tmp/out")" -eq 4
timeout 120 "$dagr" bench maxpool --batch 3 --iters 3 --json > "$tmp/out" 2>&1
expect "bench maxpool --json: a row per pooling" test $? -eq 0 -a "$(grep -c '"dagr_backward_ms":.*"dagr_forward_ms":.*"torch_backward_ms":.*"torch_forward_ms"' "$tmp/out")" -eq 2
timeout 10 "$dagr" bench allreduce --max 12Q 2> "$tmp/err"
expect "a bad size is rejected" grep -q "not a size" "$tmp/err"

finish
