/* Raw MPI_Allreduce beside which scripts/perf_mpi_net.sh measures dagr's MPI
 * backend, timed the way `dagr bench` times dagr: float sum, out of place,
 * 100 warm-up calls below 64 KiB (5 above), the call count sized by rank 0 to
 * about BUDGET seconds, then the mean time of back-to-back calls, max over ranks.
 * Sizes in bytes are the arguments after BUDGET. Prints, on rank 0,
 * "mpi_<bytes>B_time <us>" and "mpi_nb_<bytes>B_time <us>" (MPI_Iallreduce + MPI_Wait).
 * Usage: mpirun -np 2 mpi_raw_allreduce BUDGET BYTES... */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static double timed(int nonblocking, float *in, float *out, int count, double budget, int bytes) {
  MPI_Request q;
  int warm = bytes < 65536 ? 100 : 5, iters;
#define CALL() do { if (nonblocking) { MPI_Iallreduce(in, out, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &q); \
    MPI_Wait(&q, MPI_STATUS_IGNORE); } else MPI_Allreduce(in, out, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); } while (0)
  for (int i = 0; i < warm; i++) CALL();
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < 3; i++) CALL();
  double per = (MPI_Wtime() - t0) / 3;
  long chosen = (long)(budget / (per > 1e-9 ? per : 1e-9));
  iters = (int)(chosen < 3 ? 3 : chosen > 100000 ? 100000 : chosen);
  MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  t0 = MPI_Wtime();
  for (int i = 0; i < iters; i++) CALL();
  double t = (MPI_Wtime() - t0) / iters, tmax;
  MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return tmax;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (argc < 3) {
    if (rank == 0) fprintf(stderr, "usage: mpi_raw_allreduce BUDGET_S BYTES...\n");
    MPI_Finalize();
    return 2;
  }
  double budget = atof(argv[1]);
  for (int a = 2; a < argc; a++) {
    int bytes = atoi(argv[a]), count = bytes / (int)sizeof(float);
    float *in = malloc(bytes), *out = malloc(bytes);
    for (int i = 0; i < count; i++) in[i] = (float)(rank + 1);
    for (int nb = 0; nb < 2; nb++) {
      double t = timed(nb, in, out, count, budget, bytes);
      if (count > 0 && out[count - 1] != n * (n + 1) / 2.0f) {
        fprintf(stderr, "mpi_raw_allreduce: wrong result at %d B\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      if (rank == 0) printf("mpi%s_%dB_time %.3f\n", nb ? "_nb" : "", bytes, t * 1e6);
    }
    free(in);
    free(out);
  }
  MPI_Finalize();
  return 0;
}
