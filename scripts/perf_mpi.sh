#!/usr/bin/env bash
# dagr's mpi and hier backends beside raw MPI_Allreduce (the anchor) and dagr's
# shm, 2 ranks, interleaved launches. Usage: scripts/perf_mpi.sh [RUNS=3]
# Runs mpirun inside a loopback-only network namespace. Writes bench-out/mpi-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
out=bench-out; mkdir -p "$out"; : > "$out/mpi-values.txt"
export ANCHORS_OUT=$PWD/$out/anchors-build
M="mpirun --allow-run-as-root --mca pml ob1 --mca btl self,vader --mca oob_tcp_if_include lo -np 2 --bind-to core"
for i in $(seq 1 "$RUNS"); do
  for b in mpi hier; do
    unshare --net sh -c "ip link set lo up && $M -x DAGR_HOST=one build/dagr bench allreduce --backend $b --min 1M --max 64M --json" > "$out/$b.$i.jsonl"
  done
  build/dagr bench allreduce -n 2 --min 1M --max 64M --json > "$out/shm.$i.jsonl"
  for b in mpi hier shm; do
    sed -n 's/.*"bytes":\([0-9]*\).*"time_us":\([0-9.e+]*\).*/dagr_'$b'_\1B_time \2/p' "$out/$b.$i.jsonl" >> "$out/mpi-values.txt"
  done
  ../shared/anchors/mpi_allreduce.sh 1 1.0 2>&1 | grep -E '^mpi_np2_(1|16|64)MiB_b2b_time ' | awk '{print $1, $2}' >> "$out/mpi-values.txt"
done
sort -k1,1 -k2,2g "$out/mpi-values.txt" | awk '
  function flush() { if (name != "") { m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2; printf "%-34s %12.4g   (n=%d, %.4g-%.4g)\n", name, m, n, v[1], v[n] } }
  $1 != name { flush(); name = $1; n = 0 } { v[++n] = $2 } END { flush() }' | tee "$out/mpi-summary.txt"
