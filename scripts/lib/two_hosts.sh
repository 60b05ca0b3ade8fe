# Two emulated hosts for MPI benchmarks: network namespaces joined by a veth
# pair (10.232.0.1 and 10.232.0.2), optionally shaped by a token bucket on
# each end (this kernel has no netem: bandwidth only, no added delay). Source
# it, then:
#   two_hosts_up SLOTS [RATE]     # RATE as tc says it (1gbit); none: unshaped
#   two_hosts_mpirun NP CMD...    # mpirun across both hosts, SLOTS ranks each
# The namespaces and files go when the sourcing shell exits (an EXIT trap).
# Needs root (ip netns, tc).
two_hosts_work=$(mktemp -d)
two_hosts_h1=dagr-th1-$$ two_hosts_h2=dagr-th2-$$
two_hosts_down() {
  ip netns del "$two_hosts_h1" 2>/dev/null || true
  ip netns del "$two_hosts_h2" 2>/dev/null || true
  rm -rf "$two_hosts_work"
}
trap two_hosts_down EXIT

two_hosts_up() {
  local slots=$1 rate=${2:-}
  two_hosts_down; mkdir -p "$two_hosts_work"
  ip netns add "$two_hosts_h1"; ip netns add "$two_hosts_h2"
  ip link add tv1-$$ type veth peer name tv2-$$
  ip link set tv1-$$ netns "$two_hosts_h1"; ip link set tv2-$$ netns "$two_hosts_h2"
  ip -n "$two_hosts_h1" addr add 10.232.0.1/24 dev tv1-$$; ip -n "$two_hosts_h2" addr add 10.232.0.2/24 dev tv2-$$
  local ns dev
  for ns in "$two_hosts_h1" "$two_hosts_h2"; do ip -n "$ns" link set lo up; done
  ip -n "$two_hosts_h1" link set tv1-$$ up; ip -n "$two_hosts_h2" link set tv2-$$ up
  if [ -n "$rate" ]; then
    ip netns exec "$two_hosts_h1" tc qdisc add dev tv1-$$ root tbf rate "$rate" burst 256kb latency 100ms
    ip netns exec "$two_hosts_h2" tc qdisc add dev tv2-$$ root tbf rate "$rate" burst 256kb latency 100ms
  fi
  printf '10.232.0.1 slots=%d\n10.232.0.2 slots=%d\n' "$slots" "$slots" > "$two_hosts_work/hosts"
  # A core for every rank: rank r on core r (see two_hosts_mpirun).
  if [ $((2 * slots)) -le "$(nproc)" ]; then
    local r
    for r in $(seq 0 $((2 * slots - 1))); do
      echo "rank $r=10.232.0.$((r / slots + 1)) slot=$r"
    done > "$two_hosts_work/ranks"
  fi
  # rsh agent: "HOST COMMAND..." -> run COMMAND in the namespace of HOST
  printf '#!/bin/sh\nhost=$1; shift\ncase $host in 10.232.0.2) ns=%s ;; *) ns=%s ;; esac\nexec ip netns exec $ns sh -c "$*"\n' \
    "$two_hosts_h2" "$two_hosts_h1" > "$two_hosts_work/agent"
  chmod +x "$two_hosts_work/agent"
}

# Ranks fill host 1 first and talk TCP even within a host (both namespaces
# see one /dev/shm, where OpenMPI's shared-memory transport would name its
# segments alike and crash). On 2 cores idle ranks must yield, or every message
# waits for a scheduler tick. Where this machine has a core for every rank,
# rank r runs on core r (a rankfile), as ranks on two real hosts each have
# their own: unbound, the scheduler moved the two ranks' threads across both
# cores, and PowerSGD's MLP run on the 1 Gbit/s link took 12 % longer (5
# interleaved pairs, last epoch 16 %). mpirun's own default is no good here:
# --bind-to core binds each emulated host's first rank to its first core, the
# same core 0 of this one machine, leaving the other idle; each rank then got
# its peer's message only once the peer, computing on that core, gave it up
# (up to ~1.5 ms late at every step, measured with 512-byte exchanges). With
# fewer cores than ranks, nothing is bound.
two_hosts_mpirun() {
  local np=$1; shift
  local placement=(--map-by slot --bind-to none)
  [ -f "$two_hosts_work/ranks" ] && placement=(--rankfile "$two_hosts_work/ranks")
  timeout 600 ip netns exec "$two_hosts_h1" mpirun --allow-run-as-root --hostfile "$two_hosts_work/hosts" -np "$np" \
    "${placement[@]}" --mca plm_rsh_agent "$two_hosts_work/agent" --mca pml ob1 --mca btl self,tcp \
    --mca btl_tcp_if_include 10.232.0.0/24 --mca oob_tcp_if_include 10.232.0.0/24 --mca mpi_yield_when_idle 1 \
    "$@"
}
