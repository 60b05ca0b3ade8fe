/* Probe for the MPI backend's large allreduce: three ways to sum a float
 * buffer over 2 ranks, timed back to back on rank 0 (mean of 300 calls, 30 at
 * 8 MiB and more), completion polled with MPI_Testall as dagr's MPI runtime
 * polls:
 *   whole:    swap the whole buffer (one message each way), then reduce all
 *             of it: what dagr's checked exchange does for 2 ranks;
 *   halving:  swap the halves each rank does not own, reduce the own half,
 *             swap the reduced halves (reduce-scatter, then allgather);
 *   MPI_Allreduce, OpenMPI's own choice.
 * Measured across the two emulated hosts (docs/PERFORMANCE.md, "The MPI
 * backend across the two namespaces on the same box"):
 *   mpicc -O2 scripts/mpi_swap_vs_halving.c -o /tmp/halve
 *   source scripts/lib/two_hosts.sh; two_hosts_up 1
 *   two_hosts_mpirun 2 /tmp/halve 65536 1048576 4194304 16777216 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
static void wait_all(int n, MPI_Request *q) { int done = 0; while (!done) MPI_Testall(n, q, &done, MPI_STATUSES_IGNORE); }
static void add(float *o, const float *a, const float *b, int n) { for (int i = 0; i < n; i++) o[i] = a[i] + b[i]; }
/* whole swap: send all, receive all, reduce all */
static void swap_whole(float *in, float *out, float *tmp, int count, int peer) {
  MPI_Request q[2];
  MPI_Irecv(tmp, count * 4, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(in, count * 4, MPI_BYTE, peer, 2, MPI_COMM_WORLD, &q[1]);
  wait_all(2, q);
  add(out, in, tmp, count);
}
/* halving: send the peer's half, reduce mine, send my result, receive theirs into out */
static void halve(float *in, float *out, float *tmp, int count, int rank, int peer) {
  int h = count / 2, lo = rank == 0 ? 0 : h, n = rank == 0 ? h : count - h, plo = rank == 0 ? h : 0, pn = count - n;
  MPI_Request q[2];
  MPI_Irecv(tmp, n * 4, MPI_BYTE, peer, 3, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(in + plo, pn * 4, MPI_BYTE, peer, 3, MPI_COMM_WORLD, &q[1]);
  wait_all(2, q);
  add(out + lo, in + lo, tmp, n);
  MPI_Irecv(out + plo, pn * 4, MPI_BYTE, peer, 4, MPI_COMM_WORLD, &q[0]);
  MPI_Isend(out + lo, n * 4, MPI_BYTE, peer, 4, MPI_COMM_WORLD, &q[1]);
  wait_all(2, q);
}
int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank; MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int peer = 1 - rank;
  for (int a = 1; a < argc; a++) {
    int bytes = atoi(argv[a]), count = bytes / 4;
    float *in = malloc(bytes), *out = malloc(bytes), *tmp = malloc(bytes);
    for (int i = 0; i < count; i++) in[i] = i;
    int iters = bytes >= (8 << 20) ? 30 : 300;
    double t[3];
    for (int alg = 0; alg < 3; alg++) {
      for (int i = 0; i < 3; i++) { if (alg == 0) swap_whole(in, out, tmp, count, peer); else if (alg == 1) halve(in, out, tmp, count, rank, peer); else MPI_Allreduce(in, out, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = MPI_Wtime();
      for (int i = 0; i < iters; i++) { if (alg == 0) swap_whole(in, out, tmp, count, peer); else if (alg == 1) halve(in, out, tmp, count, rank, peer); else MPI_Allreduce(in, out, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }
      t[alg] = (MPI_Wtime() - t0) / iters * 1e6;
    }
    if (rank == 0) printf("%9d B: whole %9.1f us  halving %9.1f us  MPI_Allreduce %9.1f us\n", bytes, t[0], t[1], t[2]);
    free(in); free(out); free(tmp);
  }
  MPI_Finalize();
}
