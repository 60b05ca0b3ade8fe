// MPI-only worker for tests under mpirun:
//   mpi_worker hier-equals-flat   DAGR_BACKEND=hier comm vs a flat MPI comm: same bits
//   mpi_worker two-groups         4 ranks as 2 x 2 groups; each rank drives its row group and its column
//                                 group from two threads at once (as tensor- and data-parallel training
//                                 does); every result is checked. Exit 0 when all were right.
//   mpi_worker late               the last rank enters an allreduce 3 s after the others, whose timeout is
//                                 1 s: they time out, then try a second communicator; the late rank's
//                                 allreduce must time out too. Every rank prints what it caught; exit 1.
//   mpi_worker stop               the last rank stops itself (SIGSTOP) before an allreduce the others wait
//                                 in with a 2 s timeout. They print their TimeoutError and exit 1.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/comm/mpi.h"
#include "dagr/error.h"

using namespace dagr;

namespace {

int hier_equals_flat() {
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
}

// Rank r is in row r / 2 and column r % 2. One thread loops over allreduces of
// the row group while another loops over the column group, with sizes that
// vary per iteration (small ones finish within a poll, large ones take many),
// so each rank's two groups keep overlapping in different phases.
int two_groups() {
  Communicator world = Communicator::from_env();
  if (world.size() != 4) return 3;
  Communicator row = *world.split(world.rank() / 2, world.rank());
  Communicator column = *world.split(world.rank() % 2, world.rank());
  constexpr int kIterations = 400;
  int failures[2] = {0, 0};
  auto loop = [&](Communicator& comm, int which) {
    for (int i = 0; i < kIterations; ++i) {
      const std::size_t count = (i % 3 == 0) ? 1 : (i % 3 == 1) ? 4096 : 100000;
      std::vector<float> v(count, static_cast<float>(world.rank() + i));
      comm.allreduce(std::span<float>(v));
      // Row {2k, 2k+1}: 4k + 1 + 2i; column {c, c+2}: 2c + 2 + 2i.
      const int r = world.rank();
      const float want = which == 0 ? static_cast<float>(4 * (r / 2) + 1 + 2 * i) : static_cast<float>(2 * (r % 2) + 2 + 2 * i);
      if (v[0] != want || v[count - 1] != want) ++failures[which];
    }
  };
  std::thread other([&] { loop(column, 1); });
  loop(row, 0);
  other.join();
  world.barrier();
  const bool ok = failures[0] == 0 && failures[1] == 0;
  std::printf("rank %d: two groups from two threads %s\n", world.rank(), ok ? "all correct" : "WRONG RESULTS");
  return ok ? 0 : 1;
}

int late() {
  Communicator world = Communicator::from_env();
  Communicator second = wrap_mpi(MPI_COMM_WORLD);
  world.barrier();
  std::vector<float> v(1000, 1.0f);
  if (world.rank() == world.size() - 1) sleep(3);
  try {
    world.allreduce(std::span<float>(v), ReduceOp::sum, {.timeout = std::chrono::seconds(1)});
    std::printf("rank %d: no error from the allreduce\n", world.rank());
    return 1;
  } catch (const TimeoutError& e) {
    std::printf("rank %d: caught TimeoutError: %s\n", world.rank(), e.what());
  }
  try {  // MPI must not be driven on: that would complete the abandoned call into freed buffers
    second.allreduce(std::span<float>(v), ReduceOp::sum, {.timeout = std::chrono::seconds(1)});
    std::printf("rank %d: no error from the second communicator\n", world.rank());
  } catch (const Error& e) {
    std::printf("rank %d: second communicator: %s\n", world.rank(), e.what());
  }
  std::fflush(stdout);
  return 1;
}

int stop() {
  Communicator world = Communicator::from_env();
  world.barrier();
  if (world.rank() == world.size() - 1) raise(SIGSTOP);
  std::vector<float> v(1000, 1.0f);
  try {
    world.allreduce(std::span<float>(v), ReduceOp::sum, {.timeout = std::chrono::seconds(2)});
  } catch (const TimeoutError& e) {
    std::printf("rank %d: caught TimeoutError: %s\n", world.rank(), e.what());
    std::fflush(stdout);
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    if (scenario == "hier-equals-flat") return hier_equals_flat();
    if (scenario == "two-groups") return two_groups();
    if (scenario == "late") return late();
    if (scenario == "stop") return stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_worker: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: mpi_worker hier-equals-flat|two-groups|late|stop\n");
  return 2;
}
