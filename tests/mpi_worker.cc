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
//   mpi_worker mismatches         the last rank calls another collective than the others, in each of the
//                                 ways the fingerprint check must catch (counts across every size class of
//                                 the checked exchange, op, dtype, kind, root), each on a fresh communicator;
//                                 every rank must get a MismatchError naming both calls. Then MPI must
//                                 still work. Exit 0 when all were caught.
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

// One collective with its arguments, as the ranks of a case call it.
struct Call {
  OpKind kind;
  std::size_t count;
  DType dtype = DType::float32;
  ReduceOp op = ReduceOp::sum;
  int root = 0;
  std::string text;  // what the MismatchError must name
};

void make_call(Communicator& comm, const Call& c) {
  const CallOptions timeout{.timeout = std::chrono::seconds(20)};
  const int n = comm.size();
  if (c.kind == OpKind::barrier) return comm.barrier(timeout);
  if (c.dtype == DType::float64) {
    std::vector<double> v(c.count, 1.0);
    return comm.allreduce(std::span<double>(v), c.op, timeout);
  }
  if (c.dtype == DType::int32) {
    std::vector<std::int32_t> v(c.count, 1);
    return comm.allreduce(std::span<std::int32_t>(v), c.op, timeout);
  }
  std::vector<float> v(c.count * n, 1.0f), out(c.count * n);
  switch (c.kind) {
    case OpKind::allreduce: return comm.allreduce(std::span<float>(v.data(), c.count), c.op, timeout);
    case OpKind::broadcast: return comm.broadcast(std::span<float>(v.data(), c.count), c.root, timeout);
    case OpKind::allgather:
      return comm.allgather(std::span<const float>(v.data(), c.count), std::span<float>(out), timeout);
    case OpKind::reduce_scatter:
      return comm.reduce_scatter(std::span<const float>(v), std::span<float>(out.data(), c.count), c.op, timeout);
    default: throw InputError("make_call: unsupported kind");
  }
}

int mismatches() {
  using K = OpKind;
  const Call ar10{K::allreduce, 10, DType::float32, ReduceOp::sum, 0, "allreduce(sum, float32, count=10)"};
  // {what most ranks call, what the last rank calls}: sizes on both sides of the inline limit (8 KiB), the
  // chunked limit (256 KiB) and the exchange limit (64 KiB, past which more than two ranks use MPI's own).
  const std::vector<std::pair<Call, Call>> cases = {
      {ar10, {K::allreduce, 11, DType::float32, ReduceOp::sum, 0, "count=11"}},
      {ar10, {K::allreduce, 100000, DType::float32, ReduceOp::sum, 0, "count=100000"}},
      {{K::allreduce, 5000, DType::float32, ReduceOp::sum, 0, "count=5000"},
       {K::allreduce, 20000, DType::float32, ReduceOp::sum, 0, "count=20000"}},
      {{K::allreduce, 1 << 20, DType::float32, ReduceOp::sum, 0, "count=1048576"},
       {K::allreduce, (1 << 20) + 1, DType::float32, ReduceOp::sum, 0, "count=1048577"}},
      {{K::allreduce, 20000, DType::float32, ReduceOp::sum, 0, "count=20000"},
       {K::allreduce, 1000, DType::float32, ReduceOp::sum, 0, "count=1000"}},
      // 256 KiB, where two ranks halve, against one element fewer, where they swap
      {{K::allreduce, 65536, DType::float32, ReduceOp::sum, 0, "count=65536"},
       {K::allreduce, 65535, DType::float32, ReduceOp::sum, 0, "count=65535"}},
      {ar10, {K::allreduce, 10, DType::float32, ReduceOp::max, 0, "allreduce(max"}},
      {ar10, {K::allreduce, 10, DType::int32, ReduceOp::sum, 0, "int32"}},
      {{K::allreduce, 5, DType::float64, ReduceOp::sum, 0, "float64, count=5"},
       {K::allreduce, 10, DType::float32, ReduceOp::sum, 0, "float32, count=10"}},
      {ar10, {K::broadcast, 10, DType::float32, ReduceOp::sum, 0, "broadcast(float32, count=10, root=0)"}},
      {{K::broadcast, 30000, DType::float32, ReduceOp::sum, 0, "root=0"},
       {K::broadcast, 30000, DType::float32, ReduceOp::sum, 1, "root=1"}},
      {{K::barrier, 0, DType::float32, ReduceOp::sum, 0, "barrier()"},
       {K::allreduce, 1, DType::float32, ReduceOp::sum, 0, "allreduce(sum, float32, count=1)"}},
      {{K::allgather, 100, DType::float32, ReduceOp::sum, 0, "allgather(float32, count=100)"},
       {K::allgather, 101, DType::float32, ReduceOp::sum, 0, "allgather(float32, count=101)"}},
      {{K::reduce_scatter, 100, DType::float32, ReduceOp::sum, 0, "reduce_scatter(sum, float32, count=100)"},
       {K::allreduce, 100, DType::float32, ReduceOp::sum, 0, "allreduce(sum, float32, count=100)"}},
  };
  Communicator world = wrap_mpi(MPI_COMM_WORLD);
  const bool odd = world.rank() == world.size() - 1;
  int caught = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    Communicator comm = wrap_mpi(MPI_COMM_WORLD);
    const Call& mine = odd ? cases[i].second : cases[i].first;
    try {
      make_call(comm, mine);
      std::printf("rank %d: case %zu: no error\n", world.rank(), i);
    } catch (const MismatchError& e) {
      const std::string m = e.what();
      const bool names_both = m.find(cases[i].first.text) != std::string::npos &&
                              m.find(cases[i].second.text) != std::string::npos;
      if (names_both) ++caught;
      else std::printf("rank %d: case %zu: %s\n", world.rank(), i, e.what());
    }
  }
  // MPI itself is still healthy: a correct allreduce on a fresh communicator.
  std::vector<float> v(1000, 1.0f);
  world.allreduce(std::span<float>(v));
  const bool healthy = v[999] == static_cast<float>(world.size());
  const bool ok = caught == static_cast<int>(cases.size()) && healthy;
  std::printf("rank %d: %d of %zu mismatches caught%s\n", world.rank(), caught, cases.size(),
              ok ? ", MPI still healthy" : healthy ? "" : ", then a WRONG allreduce");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    if (scenario == "hier-equals-flat") return hier_equals_flat();
    if (scenario == "two-groups") return two_groups();
    if (scenario == "late") return late();
    if (scenario == "stop") return stop();
    if (scenario == "mismatches") return mismatches();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_worker: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: mpi_worker hier-equals-flat|two-groups|late|stop|mismatches\n");
  return 2;
}
