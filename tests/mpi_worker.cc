// MPI-only worker for tests under mpirun:
//   mpi_worker hier-equals-flat   DAGR_BACKEND=hier comm vs a flat MPI comm: same bits
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/comm/mpi.h"
#include "dagr/error.h"

using namespace dagr;

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    if (scenario != "hier-equals-flat") return 2;
    Communicator hier = Communicator::from_env();
    Communicator flat = wrap_mpi(MPI_COMM_WORLD);
    if (hier.backend_name() != "hier" || flat.backend_name() != "mpi") return 3;
    int failures = 0;
    for (std::size_t count : {std::size_t{1}, std::size_t{1000}, std::size_t{3000017}}) {
      // Integer-valued floats: exact whatever the order of the sum.
      std::vector<float> a(count), b(count);
      for (std::size_t i = 0; i < count; ++i) a[i] = b[i] = static_cast<float>((hier.rank() + 1) * (i % 97));
      hier.allreduce(std::span<float>(a));
      flat.allreduce(std::span<float>(b));
      failures += std::memcmp(a.data(), b.data(), count * sizeof(float)) != 0;
      std::vector<std::int64_t> x(count, hier.rank()), y(count, hier.rank());
      hier.allreduce(std::span<std::int64_t>(x), ReduceOp::max);
      flat.allreduce(std::span<std::int64_t>(y), ReduceOp::max);
      failures += x != y || x[0] != hier.size() - 1;
      std::vector<double> m(count, hier.rank() + 1.0);
      hier.allreduce(std::span<double>(m), ReduceOp::avg);
      failures += m[count - 1] != (hier.size() + 1) / 2.0;
    }
    hier.barrier();
    std::printf("rank %d: hierarchical %s flat\n", hier.rank(), failures ? "DIFFERS FROM" : "equals");
    return failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_worker: %s\n", e.what());
    return 1;
  }
}
