#!/usr/bin/env bash
# The kill/stop matrix: kill -9 and SIGSTOP of each rank, at a random moment,
# of a program of allreduces in place on shared buffers, the same with split()
# sub-groups (their allreduces staged), `dagr train`, and `dagr train` with 2
# pipeline stages of 2 tensor-parallel ranks, whose waits chain across groups
# (every rank stopped, one random rank killed).
# Each trial: the job fails within seconds (no hang), the launcher's last line
# names the rank that was hit, so does every worker's line that blames a
# silent rank (by its launched-group number and pid, following waits across
# groups), no process crashed (no SIGSEGV anywhere), no worker is left running
# and nothing of the job is left in /dev/shm.
# Usage: chaos_tests.sh DAGR COMM_WORKER [SEED]
set -uo pipefail
dagr=$1 worker=$2
seed=${3:-$RANDOM}
RANDOM=$seed
echo "chaos seed $seed (rerun: $0 $dagr $worker $seed)"
source "$(dirname "$0")/testlib.sh"
export DAGR_TIMEOUT_S=3 OPENBLAS_NUM_THREADS=1

# The pid of the child of $1 whose environment says RANK=$2.
worker_pid() {
  local child
  for child in $(pgrep -P "$1"); do
    tr '\0' '\n' < "/proc/$child/environ" 2>/dev/null | grep -qx "RANK=$2" && { echo "$child"; return; }
  done
}
shm_entries() { ls /dev/shm | grep '^dagr-' | sort; }

# trial NAME RANKS RANK SIGNAL COMMAND...: runs COMMAND (which starts RANKS
# workers) in the background, hits RANK with SIGNAL, checks the aftermath.
trial() {
  local name=$1 ranks=$2 rank=$3 sig=$4; shift 4
  local before; before=$(shm_entries)
  "$@" > "$tmp/out" 2> "$tmp/err" & local pid=$!
  local pids=() r p
  for _ in $(seq 300); do
    pids=()
    for r in $(seq 0 $((ranks - 1))); do p=$(worker_pid "$pid" "$r"); [ -n "$p" ] && pids+=("$p"); done
    [ "${#pids[@]}" -eq "$ranks" ] && break
    sleep 0.1
  done
  sleep "$((1 + RANDOM % 2)).$((RANDOM % 10))"
  kill -"$sig" "${pids[$rank]}"
  local start=$SECONDS status=124
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  wait "$pid"; status=$?
  local last; last=$(grep -E '^dagr( launch)?: ' "$tmp/err" | tail -1)
  local cause="killed by signal 9"; [ "$sig" = STOP ] && cause="stopped responding"
  expect "$name: rank $rank, SIG$sig: fails within 20 s ($((SECONDS - start)) s, status $status)" \
    test "$status" -ne 0 -a "$status" -ne 124 -a $((SECONDS - start)) -lt 20
  expect "$name: rank $rank, SIG$sig: the launcher names rank $rank ($last)" \
    sh -c 'echo "$0" | grep -q "rank $1 .*$2\|rank $1 $2"' "$last" "$rank" "$cause"
  local blamed; blamed=$(grep -v '^dagr\( launch\)\?: ' "$tmp/err" | grep 'stopped responding\|went silent\|gave up, blaming' |
                          grep -v "rank $rank (pid [0-9]*)\(, which stopped responding\| went silent\|, while\)\|blaming rank $rank, while")
  expect "$name: rank $rank, SIG$sig: no worker blames another rank${blamed:+ ($blamed)}" test -z "$blamed"
  expect "$name: rank $rank, SIG$sig: no segfault" sh -c '! grep -qi "signal 11\|segmentation" "$0/err" "$0/out"' "$tmp"
  expect "$name: rank $rank, SIG$sig: no worker left" sh -c 'for p; do kill -0 "$p" 2>/dev/null && exit 1; done; exit 0' _ "${pids[@]}"
  expect "$name: rank $rank, SIG$sig: nothing left in /dev/shm" test "$(shm_entries)" = "$before"
}

for sig in KILL STOP; do
  for rank in 0 1 2; do
    trial shared 3 "$rank" "$sig" "$dagr" launch -n 3 -- "$worker" steps 60
    trial split 3 "$rank" "$sig" "$dagr" launch -n 3 -- "$worker" steps 60 split
  done
  for rank in 0 1; do
    trial train 2 "$rank" "$sig" "$dagr" train --workers 2 --epochs 30 --threads 1 --out "$tmp/run"
  done
  # Every rank when stopped (each makes a different chain of waits across the groups), one when killed.
  ranks=$((RANDOM % 4)); [ "$sig" = STOP ] && ranks="0 1 2 3"
  for rank in $ranks; do
    trial pipeline-tensor 4 "$rank" "$sig" "$dagr" train --workers 4 --pipeline-parallel 2 --tensor-parallel 2 \
      --model deep-mlp --hidden 64 --epochs 30 --threads 1 --out "$tmp/run"
  done
done
finish
