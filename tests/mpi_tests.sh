#!/usr/bin/env bash
# The MPI and hierarchical backends under a real mpirun, inside a loopback-only
# network namespace (nothing listens beyond it), and a two-"host" run across
# two network namespaces joined by a veth pair. Also: the failure paths (a late
# or stopped rank ends the job within seconds, with no crash), two groups
# driven from two threads (tensor x data parallel) without deadlock, and the
# dagr commands as ranks of an mpirun job rather than launchers of their own.
# Usage: mpi_tests.sh DAGR COMM_WORKER MPI_WORKER TP_MPI_WORKER
set -uo pipefail
dagr=$1 worker=$2 mpi_worker=$3 tp_mpi_worker=$4
here=$(cd "$(dirname "$0")" && pwd)
source "$here/testlib.sh"
if ! unshare --net true 2>/dev/null; then
  echo "SKIP: this machine cannot make network namespaces (unshare --net failed); the MPI tests need one"
  echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
mpirun_lo() {  # mpirun inside a private namespace with only lo
  timeout 120 unshare --net sh -c 'ip link set lo up && exec mpirun --allow-run-as-root --mca pml ob1 --mca btl self,vader --mca oob_tcp_if_include lo "$@"' mpirun "$@"
}

mpirun_lo -np 2 "$worker" collectives > "$tmp/out" 2>&1
expect "collectives over MPI, 2 ranks" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq 2
mpirun_lo -np 4 --oversubscribe "$worker" collectives > "$tmp/out" 2>&1
expect "collectives over MPI, 4 ranks on 2 cores" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq 4
mpirun_lo -np 4 --oversubscribe -x DAGR_BACKEND=hier sh -c 'DAGR_HOST=host$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" collectives' "$worker" > "$tmp/out" 2>&1
expect "collectives over hier, 2 hosts x 2 ranks" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq 4
mpirun_lo -np 4 --oversubscribe -x DAGR_BACKEND=hier sh -c 'DAGR_HOST=host$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" hier-equals-flat' "$mpi_worker" > "$tmp/out" 2>&1
expect "hierarchical allreduce gives the flat bits" test $? -eq 0 -a "$(grep -c 'hierarchical equals flat' "$tmp/out")" -eq 4
mpirun_lo -np 3 --oversubscribe "$worker" mismatch > "$tmp/out" 2>&1
expect "mismatch over MPI is a MismatchError on every rank" test $? -eq 0 -a "$(grep -c 'caught MismatchError' "$tmp/out")" -eq 3
# Secure aggregation over MPI: the generic encode, int32 sum, decode (shared
# memory fuses it into its pipeline; launch_tests.sh covers that).
mpirun_lo -np 3 --oversubscribe "$worker" secure > "$tmp/out" 2>&1
expect "secure allreduce over MPI equals the fixed-point sum, bitwise; a NaN is refused on every rank" \
  test $? -eq 0 -a "$(grep -c 'secure sums exact' "$tmp/out")" -eq 3
mpirun_lo -np 3 --oversubscribe "$worker" secure-wrong-key > "$tmp/out" 2>&1
expect "secure allreduce over MPI: a rank with the wrong key is caught on every rank" \
  test $? -eq 0 -a "$(grep -c 'wrong key detected' "$tmp/out")" -eq 3
for n in 2 3 4; do  # every way of differing, across the size classes of the checked exchange
  mpirun_lo -np $n --oversubscribe "$mpi_worker" mismatches > "$tmp/out" 2>&1
  expect "every kind of mismatch is a MismatchError on all $n ranks, MPI healthy after" \
    test $? -eq 0 -a "$(grep -c 'mismatches caught, MPI still healthy' "$tmp/out")" -eq $n
  grep -v 'still healthy' "$tmp/out" | head -5
done
start=$(date +%s)
mpirun_lo -np 3 --oversubscribe "$worker" die > "$tmp/out" 2>&1
status=$?
expect "a failing rank ends the mpirun job (status $status)" test "$status" -ne 0 -a "$status" -ne 124
expect "mpirun names the rank that died" grep -q "rank 2 .*signal 9" "$tmp/out"
expect "within seconds" test $(( $(date +%s) - start )) -lt 30
mpirun_lo -np 2 "$dagr" bench allreduce --backend mpi --max 1M --iters 3 --json > "$tmp/out" 2>&1
expect "dagr bench --backend mpi is correct" test $? -eq 0 -a "$(grep -c '"correct":true' "$tmp/out")" -eq 18
"$dagr" bench allreduce -n 2 --backend mpi > "$tmp/out" 2>&1
expect "--backend mpi without mpirun is a clear error" grep -q "mpirun" "$tmp/out"

# Failure paths. A timed-out call fails MPI for the whole process (no further
# MPI call could complete the abandoned one into freed buffers), and the process
# ends without MPI_Finalize, which would wait for the silent rank.
start=$(date +%s)
mpirun_lo -np 2 "$mpi_worker" late > "$tmp/out" 2>&1
status=$? took=$(( $(date +%s) - start ))
expect "a late rank: the job fails (status $status), in ${took}s < 30s" test "$status" -ne 0 -a "$status" -ne 124 -a "$took" -lt 30
expect "the punctual rank gets a TimeoutError" grep -q "rank 0: caught TimeoutError: timed out" "$tmp/out"
expect "after it, MPI is not driven on through another communicator" \
  grep -q "rank 0: second communicator: MPI is unusable after an earlier failure" "$tmp/out"
expect "and nothing crashes" test "$(grep -c 'signal 11\|Segmentation fault' "$tmp/out")" -eq 0
start=$(date +%s)
mpirun_lo -np 2 "$mpi_worker" stop > "$tmp/out" 2>&1
status=$? took=$(( $(date +%s) - start ))
expect "a stopped rank: the job ends (status $status) in ${took}s < 30s, not in MPI_Finalize" \
  test "$status" -ne 0 -a "$status" -ne 124 -a "$took" -lt 30
expect "the other rank names the timeout" grep -q "rank 0: caught TimeoutError: timed out" "$tmp/out"

# Two communicators at once from two threads of every rank.
mpirun_lo -np 4 --oversubscribe -x DAGR_TIMEOUT_S=30 "$mpi_worker" two-groups > "$tmp/out" 2>&1
expect "row and column groups from two threads: no deadlock, all correct" \
  test $? -eq 0 -a "$(grep -c 'two groups from two threads all correct' "$tmp/out")" -eq 4
mpirun_lo -np 4 --oversubscribe -x DAGR_TIMEOUT_S=30 -x OPENBLAS_NUM_THREADS=1 "$tp_mpi_worker" > "$tmp/out" 2>&1
expect "2 x 2 tensor x data parallel training over MPI: no deadlock, replicas agree" \
  test $? -eq 0 -a "$(grep -c 'tensor x data parallel over MPI consistent' "$tmp/out")" -eq 4
grep -v 'consistent$' "$tmp/out" | head -5

# The dagr commands under mpirun: each process is one rank (no workers of its own).
mpirun_lo -np 2 -x OPENBLAS_NUM_THREADS=1 "$dagr" train --epochs 1 --max-steps 30 --out "$tmp/mpi-train" > "$tmp/out" 2>&1
status=$?
expect "mpirun -np 2 dagr train succeeds (status $status)" test "$status" -eq 0
expect "as 2 ranks of one job, each training once" test "$(grep -c '^Rank [01] training loss' "$tmp/out")" -eq 2
expect "no rank started workers of its own" test "$(grep -c 'orte_ess_init failed\|^Rank [2-9]' "$tmp/out")" -eq 0
grep -i 'error\|fail' "$tmp/out" | head -5
mpirun_lo -np 2 -x OPENBLAS_NUM_THREADS=1 "$dagr" infer --checkpoint "$tmp/mpi-train/model.pt" > "$tmp/out" 2>&1
expect "mpirun -np 2 dagr infer: one accuracy line" test $? -eq 0 -a "$(grep -c '^accuracy ' "$tmp/out")" -eq 1
mpirun_lo -np 2 "$dagr" bench allreduce --max 64K --iters 2 --json > "$tmp/out" 2>&1
expect "mpirun -np 2 dagr bench: one table, on MPI, correct" \
  test $? -eq 0 -a "$(grep -c '"correct":true' "$tmp/out")" -eq 14 -a "$(grep -c '"correct":false' "$tmp/out")" -eq 0

# Slurm: a task of srun is one rank; srun tasks without PMI would each run alone.
SLURM_PROCID=0 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=2 timeout 30 "$dagr" train --epochs 1 > "$tmp/out" 2>&1
status=$?
expect "srun without an MPI plugin: exit 2 (got $status), says what to do" \
  test "$status" -eq 2 -a "$(grep -c 'srun --mpi=pmix' "$tmp/out")" -eq 1
SLURM_PROCID=0 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=1 timeout 30 "$dagr" bench allreduce -n 2 --max 1K --iters 1 > "$tmp/out" 2>&1
expect "one srun task is one rank: bench -n 2 runs 1 rank" grep -q "^# dagr bench allreduce: 1 ranks" "$tmp/out"
SLURM_PROCID=0 timeout 30 "$dagr" bench allreduce -n 2 --max 1K --iters 1 > "$tmp/out" 2>&1
expect "an salloc/sbatch shell (no step) still starts its workers" grep -q "^# dagr bench allreduce: 2 ranks" "$tmp/out"

# Two hosts: namespaces dagr-h1 and dagr-h2 joined by a veth pair; mpirun in
# dagr-h1 starts the second rank through an agent that runs it in dagr-h2.
h1=dagr-h1-$$ h2=dagr-h2-$$
cleanup() { ip netns del "$h1" 2>/dev/null; ip netns del "$h2" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if ip netns add "$h1" 2>/dev/null && ip netns add "$h2" && ip link add v1-$$ type veth peer name v2-$$ &&
   ip link set v1-$$ netns "$h1" && ip link set v2-$$ netns "$h2" &&
   ip -n "$h1" addr add 10.231.0.1/24 dev v1-$$ && ip -n "$h2" addr add 10.231.0.2/24 dev v2-$$ &&
   ip -n "$h1" link set v1-$$ up && ip -n "$h2" link set v2-$$ up && ip -n "$h1" link set lo up && ip -n "$h2" link set lo up; then
  printf '10.231.0.1 slots=1\n10.231.0.2 slots=1\n' > "$tmp/hosts"
  printf '#!/bin/sh\n# rsh agent: "HOST COMMAND..." -> run COMMAND in the namespace of HOST\nhost=$1; shift\ncase $host in 10.231.0.2) ns=%s ;; *) ns=%s ;; esac\nexec ip netns exec $ns sh -c "$*"\n' "$h2" "$h1" > "$tmp/agent"
  chmod +x "$tmp/agent"
  timeout 120 ip netns exec "$h1" mpirun --allow-run-as-root --hostfile "$tmp/hosts" -np 2 \
    --mca plm_rsh_agent "$tmp/agent" --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include 10.231.0.0/24 \
    --mca oob_tcp_if_include 10.231.0.0/24 --bind-to none "$worker" collectives > "$tmp/out" 2>&1
  expect "two hosts over veth: all collectives correct" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq 2
  grep -v 'all collectives correct' "$tmp/out" | head -20
  timeout 120 ip netns exec "$h1" mpirun --allow-run-as-root --hostfile "$tmp/hosts" -np 2 \
    --mca plm_rsh_agent "$tmp/agent" --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include 10.231.0.0/24 \
    --mca oob_tcp_if_include 10.231.0.0/24 --bind-to none "$mpi_worker" mismatches > "$tmp/out" 2>&1
  expect "two hosts over veth: every kind of mismatch is a MismatchError on both" \
    test $? -eq 0 -a "$(grep -c 'mismatches caught, MPI still healthy' "$tmp/out")" -eq 2
  grep -v 'still healthy' "$tmp/out" | head -5
else
  echo "SKIP: two-host test: this machine cannot make named network namespaces with a veth pair"
fi

finish
