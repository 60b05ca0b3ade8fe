#!/usr/bin/env bash
# A job that loses a worker keeps its progress: `dagr train` killed (kill -9) or
# stopped (SIGSTOP) at a random rank and moment, in restart mode
# (--max-restarts, resume from the newest checkpoint) and in survivors mode
# (--elastic, the others carry on). Each trial: the job finishes (exit 0), its
# test accuracy is within 0.5 point of an uninterrupted run with the same seed,
# no checkpoint is torn, nothing of the job is left in /dev/shm or running.
# Usage: recovery_tests.sh DAGR [SEED]
set -uo pipefail
dagr=$1
seed=${2:-$RANDOM}
RANDOM=$seed
echo "recovery seed $seed (rerun: $0 $dagr $seed)"
source "$(dirname "$0")/testlib.sh"
export OPENBLAS_NUM_THREADS=1 DAGR_TIMEOUT_S=3
train=(train --workers 3 --epochs 2 --threads 1 --seed 7)
accuracy() { sed -n 's/.*test accuracy \([0-9.]*\)$/\1/p' "$1" | tail -1; }
shm_entries() { ls /dev/shm | grep '^dagr-' | sort; }
close_to() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && b > 0 && d <= 0.005) }'; }

timeout 300 "$dagr" "${train[@]}" --out "$tmp/ref" > "$tmp/ref.out" 2>&1
reference=$(accuracy "$tmp/ref.out")
expect "the uninterrupted run finishes (test accuracy $reference)" test -n "$reference"

# trial NAME SIGNAL FLAGS...: hits a random rank with SIGNAL at a random moment of the first epoch.
trial() {
  local name=$1 sig=$2; shift 2
  local out=$tmp/$name before; before=$(shm_entries)
  "$dagr" "${train[@]}" --out "$out" "$@" > "$out.out" 2> "$out.err" & local pid=$!
  for _ in $(seq 600); do grep -q "^dagr train: mlp" "$out.out" 2>/dev/null && break; sleep 0.1; done
  local victim_rank=$((RANDOM % 3)) victim=""
  for child in $(pgrep -P "$pid"); do
    tr '\0' '\n' < "/proc/$child/environ" 2>/dev/null | grep -qx "RANK=$victim_rank" && victim=$child
  done
  sleep "0.$((RANDOM % 10))"
  kill -"$sig" "$victim"
  local start=$SECONDS
  for _ in $(seq 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  wait "$pid"; local status=$?
  local got; got=$(accuracy "$out.out")
  expect "$name: SIG$sig rank $victim_rank: the job finishes (status $status, $((SECONDS - start)) s)" test "$status" -eq 0
  expect "$name: SIG$sig rank $victim_rank: it recovered ($(grep -o 'restart 1 of [0-9]*\|lost 1 worker' "$out.out" "$out.err" | head -1))" \
    grep -q "restart 1 of\|lost 1 worker" "$out.out" "$out.err"
  expect "$name: SIG$sig rank $victim_rank: test accuracy $got within 0.5 point of $reference" close_to "$got" "$reference"
  expect "$name: SIG$sig rank $victim_rank: no torn or corrupt checkpoint" \
    sh -c '! grep -qi "torn\|corrupt\|checksum" "$0.out" "$0.err" && ! ls "$0"/*.tmp 2>/dev/null | grep -q .' "$out"
  expect "$name: SIG$sig rank $victim_rank: nothing left in /dev/shm" test "$(shm_entries)" = "$before"
  expect "$name: SIG$sig rank $victim_rank: no worker left" sh -c '! kill -0 "$0" 2>/dev/null' "$victim"
  expect "$name: SIG$sig rank $victim_rank: no process of the job left (workers or standby spares)" \
    sh -c '! pgrep -f -- "--out $0( |\$)"' "$out"
}

trial restart-kill KILL --max-restarts 2 --checkpoint-every 40
trial restart-stop STOP --max-restarts 2 --checkpoint-every 40
trial elastic-kill KILL --elastic
trial elastic-stop STOP --elastic
finish
