#!/usr/bin/env bash
# Recovery figures for docs/PERFORMANCE.md: `dagr train` (MLP, 3 workers) with a
# random rank killed (kill -9) at a random moment, TRIALS times in each mode;
# the time from the kill to the next completed training step (the trainer
# prints when it is done), and the steps lost. Modes: elastic (the survivors
# carry on); restart-cold (killed in the first second of training, before the
# launcher's standby spares have started up: they finish it at full priority);
# restart-warm (killed once the spares wait, as in a run hours long). Then the
# cost of checkpoints: throughput with --checkpoint-every 100 beside none.
# Usage: scripts/recovery_bench.sh [TRIALS=100] [DAGR=build/dagr]
set -uo pipefail
trials=${1:-100}
dagr=${2:-build/dagr}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1
train=(train --workers 3 --threads 1 --seed 7)
median_max() { sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "median %.3f, max %.3f (n=%d)", v[int((NR + 1) / 2)], v[NR], NR }'; }

# The launcher's child that is rank $2 (its environment says so; spares have no RANK there).
worker_pid() {
  local child
  for child in $(pgrep -P "$1"); do
    tr '\0' '\n' < "/proc/$child/environ" 2>/dev/null | grep -qx "RANK=$2" && { echo "$child"; return; }
  done
}

# one WARM FLAGS...: prints "seconds_to_next_step steps_lost" for one trial
one() {
  local warm=$1; shift
  local out=$tmp/run; rm -rf "$out"
  "$dagr" "${train[@]}" --out "$out" "$@" > "$out.out" 2> "$out.err" & local pid=$!
  for _ in $(seq 600); do grep -q "^dagr train: mlp" "$out.out" 2>/dev/null && break; sleep 0.05; done
  if [ "$warm" = warm ]; then
    for _ in $(seq 600); do [ "$(pgrep -P "$pid" -x dagr-standby | wc -l)" -ge 3 ] && break; sleep 0.05; done
  fi
  sleep "0.$((RANDOM % 10))"
  local victim; victim=$(worker_pid "$pid" $((RANDOM % 3)))
  local killed; killed=$(date +%s.%N)
  kill -9 "$victim"
  wait "$pid"
  local done_at; done_at=$(sed -n 's/.*first step after .* at \([0-9.]*\) (unix time)/\1/p' "$out.out" | tail -1)
  # Steps lost: elastic, the step in flight (the survivors go on from the last completed one);
  # restart, the steps between the checkpoint resumed and the kill (from throughput).
  local from; from=$(sed -n 's/.* from step \([0-9]*\).*/\1/p; s/.*(step \([0-9]*\))$/\1/p' "$out.out" | tail -1)
  [ -n "$done_at" ] && awk -v a="$done_at" -v b="$killed" -v f="${from:-0}" 'BEGIN { printf "%.3f %s\n", a - b, f }'
}

for mode in elastic restart-cold restart-warm; do
  case $mode in
    elastic) flags=(cold --epochs 1 --elastic) ;;
    restart-cold) flags=(cold --epochs 1 --max-restarts 3 --checkpoint-every 100) ;;
    restart-warm) flags=(warm --max-restarts 3 --checkpoint-every 100 --epochs 4) ;;
  esac
  : > "$tmp/$mode"
  for t in $(seq "$trials"); do one "${flags[@]}" >> "$tmp/$mode"; printf '\r%s %d/%d' "$mode" "$t" "$trials" >&2; done
  echo >&2
  echo "$mode: kill -9 to the next completed step: $(cut -d' ' -f1 "$tmp/$mode" | median_max) s"
done

for every in 0 100; do
  : > "$tmp/tput"
  for _ in 1 2 3; do
    "$dagr" train --workers 2 --epochs 2 --threads 1 --checkpoint-every "$every" --out "$tmp/c" 2>/dev/null |
      sed -n 's/.*, \([0-9]*\) samples\/s in training steps.*/\1/p' >> "$tmp/tput"
  done
  echo "checkpoint every $every steps (0: per epoch only): $(median_max < "$tmp/tput") samples/s"
done
lscpu | sed -n 's/^Model name: *//p'
