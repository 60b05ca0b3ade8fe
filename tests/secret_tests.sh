#!/usr/bin/env bash
# Jobs admit only their own workers (job_secret.h in comm): the launcher hands
# each worker the job's secret on a pipe (not in a command line or the
# environment); a process of the same user that knows the job id but not the
# secret is refused by the job's shared-memory group with one clear error and
# the job completes; another user cannot open the segment (0600); ranks
# started by hand, without a launcher, still work.
# Usage: secret_tests.sh DAGR COMM_WORKER
set -uo pipefail
dagr=$1 worker=$2
source "$(dirname "$0")/testlib.sh"

# waits (at most 30 s) until the file $1 exists
wait_for() { for _ in $(seq 300); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }
# the job id a worker of ours was started with, as an intruder would read it (/proc/PID/environ)
job_of() { tr '\0' '\n' < "/proc/$(cut -d' ' -f1 "$1")/environ" | sed -n 's/^DAGR_JOB_ID=//p'; }

# --- The secret's way to the workers ---------------------------------------
timeout 30 "$dagr" launch -n 2 -- bash -c 'cat <&"$DAGR_SECRET_FD" > "$0/secret.$RANK"
  tr "\0" "\n" < /proc/$$/environ > "$0/environ.$RANK"; tr "\0" " " < /proc/$$/cmdline > "$0/cmdline.$RANK"
  tr "\0" "\n" < /proc/$PPID/environ > "$0/environ.launcher"; tr "\0" " " < /proc/$PPID/cmdline > "$0/cmdline.launcher"' "$tmp"
secret=$(cat "$tmp/secret.0" 2>/dev/null)
expect "each worker reads a 64-hex-digit secret from DAGR_SECRET_FD" grep -Eqx '[0-9a-f]{64}' "$tmp/secret.0"
expect "every worker of a job gets the same secret" cmp -s "$tmp/secret.0" "$tmp/secret.1"
nowhere() { [ -n "$secret" ] && ! grep -qF "$secret" "$tmp"/environ.* "$tmp"/cmdline.*; }
expect "the secret is in no worker's or launcher's command line or environment" nowhere
timeout 30 "$dagr" launch -n 1 -- bash -c 'cat <&"$DAGR_SECRET_FD" > "$0/secret.next"' "$tmp"
expect "another job gets another secret" test -s "$tmp/secret.next" -a "$(cat "$tmp/secret.next")" != "$secret"

# --- A same-user intruder that knows the job id ----------------------------
# Rank 1 of the real job waits for $tmp/go before it joins, so that the
# intruders come while the group is being formed (its segment has a name).
start_job() {
  rm -f "$tmp/go" "$tmp/pid.0"
  "$dagr" launch -n 2 -- bash -c 'echo "$$ $DAGR_SECRET_FD" > "$0/pid.$RANK"
    if [ "$RANK" = 1 ]; then for _ in $(seq 300); do [ -e "$0/go" ] && break; sleep 0.1; done; fi
    exec "$1" collectives' "$tmp" "$worker" > "$tmp/job.out" 2> "$tmp/job.err" & job_pid=$!
  wait_for "$tmp/pid.0"
  job=$(job_of "$tmp/pid.0")
  wait_for "/dev/shm/dagr-$job"
}
finish_job() {  # lets rank 1 join; the job must complete with both real ranks
  touch "$tmp/go"
  wait "$job_pid"
  expect "$1" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/job.out")" -eq 2
}
intrude() {  # RANK WORLD_SIZE [env...]: a comm_worker of ours in the job, its stderr in $tmp/intruder
  local rank=$1 size=$2; shift 2
  env DAGR_JOB_ID="$job" RANK="$rank" WORLD_SIZE="$size" DAGR_TIMEOUT_S=10 "$@" timeout 20 "$worker" collectives \
    > /dev/null 2> "$tmp/intruder"
}
refused() {  # EXIT_STATUS PATTERN: failed at once, with one line saying why
  test "$1" -ne 0 -a "$1" -ne 124 && grep -q "$2" "$tmp/intruder" && test "$(wc -l < "$tmp/intruder")" -eq 1
}

start_job
expect "the job's segment is 0600" test "$(stat -c %a "/dev/shm/dagr-$job")" = 600
# Rank 0 waits in its join for rank 1: it read the secret's pipe as it started, and closed it.
closed() { read -r pid fd < "$tmp/pid.0"; [ -d "/proc/$pid/fd" ] && [ ! -e "/proc/$pid/fd/$fd" ]; }
expect "a worker holds the secret's descriptor no longer" closed
intrude 1 2; status=$?
expect "an intruder as rank 1 without the secret is refused" \
  refused "$status" "rank 1 refused by group /dev/shm/dagr-$job: the job admits only its own workers.*was given none"
intrude 2 3; status=$?
expect "an intruder as an extra rank is refused" refused "$status" "rank 2 refused by group.*was given none"
echo wrong-secret > "$tmp/wrong"
intrude 1 2 DAGR_SECRET_FD=3 3< "$tmp/wrong"; status=$?
expect "an intruder with a wrong secret is refused" refused "$status" "secret (DAGR_SECRET_FD) is not the job's"
intrude 0 2; status=$?
expect "an intruder as rank 0 is refused" refused "$status" "exists already: another process set up this group first"
finish_job "the job completes with its own ranks after the intruders"

# --- Another user ------------------------------------------------------------
if [ "$(id -u)" -eq 0 ] && command -v useradd > /dev/null && command -v setpriv > /dev/null; then
  user=dagrsec$$
  pub=$(mktemp -d /tmp/dagr-secret-tests.XXXXXX)
  trap 'userdel "$user" 2> /dev/null; rm -rf "$tmp" "$pub"' EXIT
  useradd --no-create-home --shell /usr/sbin/nologin "$user"
  chmod 755 "$pub"; cp "$worker" "$pub/comm_worker"
  as_other() { setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups "$@"; }
  start_job
  as_other cat "/dev/shm/dagr-$job" > /dev/null 2> "$tmp/cat"
  expect "another user cannot read the segment (EACCES)" grep -q "Permission denied" "$tmp/cat"
  as_other env DAGR_JOB_ID="$job" RANK=1 WORLD_SIZE=2 DAGR_TIMEOUT_S=10 timeout 20 "$pub/comm_worker" collectives \
    > /dev/null 2> "$tmp/intruder"; status=$?
  expect "another user's rank is refused: the segment belongs to another user" \
    refused "$status" "/dev/shm/dagr-$job belongs to another user (permission denied"
  finish_job "the job completes after the other user's attempt"
  userdel "$user"
  expect "the throwaway user is removed" sh -c "! id '$user' 2> /dev/null"
else
  echo "skip another user's tests: they need root, useradd and setpriv"
fi

# --- Ranks started by hand (no launcher) --------------------------------------
by_hand() {  # JOB SECRET_FILE_OR_EMPTY: two ranks of `collectives`, the secret from the file if given
  for r in 0 1; do
    if [ -n "$2" ]; then
      DAGR_JOB_ID=$1 RANK=$r WORLD_SIZE=2 DAGR_TIMEOUT_S=20 DAGR_SECRET_FD=3 timeout 30 "$worker" collectives 3< "$2" &
    else
      DAGR_JOB_ID=$1 RANK=$r WORLD_SIZE=2 DAGR_TIMEOUT_S=20 timeout 30 "$worker" collectives &
    fi
  done > "$tmp/hand.out" 2>&1
  wait %1; local a=$?; wait %2; local b=$?
  test "$a" -eq 0 -a "$b" -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/hand.out")" -eq 2
}
expect "ranks started by hand without a secret work as before" by_hand "st-plain-$$" ""
echo "a secret of our own" > "$tmp/ours"
expect "ranks started by hand with the same secret file work" by_hand "st-file-$$" "$tmp/ours"

job=st-mixed-$$
DAGR_JOB_ID=$job RANK=0 WORLD_SIZE=2 DAGR_TIMEOUT_S=3 "$worker" collectives > /dev/null 2>&1 & r0=$!
wait_for "/dev/shm/dagr-$job"
intrude 1 2 DAGR_SECRET_FD=3 3< "$tmp/ours"; status=$?
expect "a rank with a secret is refused by a rank 0 without one" refused "$status" "rank 0 was given none"
wait "$r0"
expect "(that rank 0 times out alone)" test $? -ne 0
: > "$tmp/empty"
job=st-empty-$$
intrude 0 1 DAGR_SECRET_FD=3 3< "$tmp/empty"; status=$?
expect "an empty DAGR_SECRET_FD is an error at join" refused "$status" "DAGR_SECRET_FD=3 gave no secret"

# --- Spares get the secret too ------------------------------------------------
timeout 60 "$dagr" launch -n 2 --max-restarts 1 --standby -- "$worker" standby die > "$tmp/out" 2> "$tmp/err"
expect "a job restarted from standby spares is admitted (they hold the secret)" \
  test $? -eq 0 -a "$(grep -c "attempt 1 pid" "$tmp/out")" -eq 2

leftover=$(ls /dev/shm | grep -c "^dagr-st-" || true)
expect "no shared memory left by the hand-started ranks" test "$leftover" -eq 0
finish
