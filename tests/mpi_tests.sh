#!/usr/bin/env bash
# The MPI and hierarchical backends under a real mpirun, inside a loopback-only
# network namespace (nothing listens beyond it), and a two-"host" run across
# two network namespaces joined by a veth pair.
# Usage: mpi_tests.sh DAGR COMM_WORKER MPI_WORKER
set -uo pipefail
dagr=$1 worker=$2 mpi_worker=$3
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
    --mca oob_tcp_if_include 10.231.0.0/24 "$worker" collectives > "$tmp/out" 2>&1
  expect "two hosts over veth: all collectives correct" test $? -eq 0 -a "$(grep -c 'all collectives correct' "$tmp/out")" -eq 2
  grep -v 'all collectives correct' "$tmp/out" | head -20
else
  echo "SKIP: two-host test: this machine cannot make named network namespaces with a veth pair"
fi

finish
