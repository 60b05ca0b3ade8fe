// `dagr bench COLLECTIVE -n N`: the nccl-tests table for one collective over a
// range of sizes (doubling from --min to --max), or JSON lines with --json;
// `dagr bench linear` and `dagr bench maxpool`: one layer, two ways.
#include <fmt/format.h>

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "bench_plot.h"
#include "collective_bench.h"
#include "commands.h"
#include "dagr/error.h"
#include "linear_bench.h"
#include "pool_bench.h"
#include "self_launch.h"

namespace dagr::cli {
namespace {

// "8", "64K", "256M", "1G" (powers of 1024) -> bytes.
std::size_t parse_size(const std::string& text) {
  std::size_t end = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &end);
  } catch (const std::exception&) {
    throw InputError(fmt::format("'{}' is not a size (examples: 8, 64K, 256M, 1G)", text));
  }
  const std::string unit = text.substr(end);
  int shift = 0;
  if (unit == "K" || unit == "k") shift = 10;
  else if (unit == "M" || unit == "m") shift = 20;
  else if (unit == "G" || unit == "g") shift = 30;
  else DAGR_ENFORCE(unit.empty() || unit == "B", InputError, "'", text, "' is not a size (examples: 8, 64K, 256M, 1G)");
  return static_cast<std::size_t>(v) << shift;
}

struct BenchArgs {
  std::string collective = "allreduce";
  int workers = 2;
  std::string min = "8", max = "256M", dtype = "float32", op = "sum";
  int iters = 0, warmup = -1;
  std::int64_t features = 8192, batch = 64;  // linear
  std::string backend = "shm";
  bool json = false, secure = false, shared = false;
  std::string plot, peers;  // bench_plot.h
};

int run_bench(const BenchArgs& a, const std::vector<std::string>& argv) {
  if (a.collective == "maxpool")
    return bench_maxpool({.batch = a.batch, .iters = a.iters > 0 ? a.iters : 50}, a.json);
  if (a.collective == "linear") {
    if (auto status = run_as_workers(a.workers, argv)) return *status;
    return bench_linear({.features = a.features, .batch = a.batch, .iters = a.iters > 0 ? a.iters : 20}, a.json);
  }
  BenchSpec spec;
  const std::map<std::string, OpKind> kinds{{"allreduce", OpKind::allreduce}, {"allgather", OpKind::allgather},
                                            {"broadcast", OpKind::broadcast}, {"reduce_scatter", OpKind::reduce_scatter}};
  spec.kind = kinds.at(a.collective);
  spec.dtype = parse_dtype(a.dtype);
  spec.op = parse_reduce_op(a.op);
  spec.iters = a.iters;
  spec.warmup = a.warmup;
  spec.secure = a.secure;
  spec.shared = a.shared;
  const std::size_t min = parse_size(a.min), max = parse_size(a.max);
  DAGR_ENFORCE(min >= 1 && min <= max, InputError, "--min ", a.min, " must be at least 1 and at most --max ", a.max);
  DAGR_ENFORCE(a.peers.empty() || !a.plot.empty(), InputError, "--peers is drawn with --plot FILE.png");
  Series measured;
  std::vector<Series> curves;
  if (!a.peers.empty()) curves = read_peer_curves(a.peers);  // a bad file: one line before any worker starts
  if (a.backend != "shm") {
    DAGR_ENFORCE(Communicator::mpi_available(), InputError, "--backend ", a.backend,
                 " needs MPI, and this dagr was built without it");
    DAGR_ENFORCE(std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK"),
                 InputError, "--backend ", a.backend, " runs under an MPI launcher: mpirun -np N dagr bench ",
                 a.collective, " --backend ", a.backend);
    setenv("DAGR_BACKEND", a.backend.c_str(), 1);
  } else if (auto status = run_as_workers(a.workers, argv)) {
    return *status;
  }

  Communicator comm = Communicator::from_env();
  const bool printer = comm.rank() == 0;
  const std::string_view type = name(spec.dtype), redop = name(spec.op);
  if (printer && !a.json) {
    fmt::print("# dagr bench {}: {} ranks, backend {}, dtype {}, op {}\n", a.collective, comm.size(),
               comm.backend_name(), type, redop);
    fmt::print("# {:>12} {:>12} {:>9} {:>6} {:>11} {:>8} {:>8} {:>7}\n", "size(B)", "count", "type", "redop",
               "time(us)", "algbw", "busbw", "correct");
    std::fflush(stdout);
  }
  bool all_correct = true;
  const std::size_t unit = element_size(spec.dtype) * (spec.kind == OpKind::allgather || spec.kind == OpKind::reduce_scatter
                                                           ? static_cast<std::size_t>(comm.size()) : 1);
  for (std::size_t bytes = min; bytes <= max; bytes *= 2) {
    spec.bytes = std::max(unit, bytes / unit * unit);
    const BenchRow row = bench_collective(comm, spec);
    all_correct = all_correct && row.correct;
    if (!printer) continue;
    measured.x.push_back(static_cast<double>(row.bytes));
    measured.y.push_back(row.busbw);
    if (a.json) {
      nlohmann::json j{{"collective", a.collective}, {"backend", comm.backend_name()}, {"ranks", comm.size()}, {"dtype", type}, {"op", redop},
                       {"bytes", row.bytes}, {"count", row.count}, {"time_us", row.time_us},
                       {"algbw", row.algbw}, {"busbw", row.busbw}, {"correct", row.correct}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("  {:>12} {:>12} {:>9} {:>6} {:>11.2f} {:>8.2f} {:>8.2f} {:>7}\n", row.bytes, row.count, type,
                 redop, row.time_us, row.algbw, row.busbw, row.correct ? "yes" : "NO");
    }
    std::fflush(stdout);
  }
  DAGR_ENFORCE(all_correct, Error, "some results were wrong (see the correct column)");
  if (printer && !a.plot.empty()) {
    measured.label = fmt::format("dagr ({}, {} ranks)", comm.backend_name(), comm.size());
    curves.insert(curves.begin(), measured);
    draw_bench_curves(a.plot, fmt::format("{} {} {}", a.collective, type, redop), curves);
    if (!a.json) fmt::print("# bandwidth curves in {}\n", a.plot);
  }
  return 0;
}

}  // namespace

Command add_bench(CLI::App& root, const std::vector<std::string>& argv) {
  auto* app = root.add_subcommand("bench", "Benchmark a collective (the nccl-tests table)");
  auto a = std::make_shared<BenchArgs>();
  app->add_option("collective", a->collective,
                  "allreduce | allgather | broadcast | reduce_scatter, or linear (a tensor-parallel layer), "
                  "or maxpool (the CNN's poolings, torch's and dagr's)")
      ->check(CLI::IsMember({"allreduce", "allgather", "broadcast", "reduce_scatter", "linear", "maxpool"}));
  app->add_option("--features", a->features, "linear: the layer is features × features")->check(CLI::Range(1, 1 << 16));
  app->add_option("--batch", a->batch, "linear: rows of the input; maxpool: images")->check(CLI::Range(1, 1 << 16));
  app->add_option("-n,--workers", a->workers, "Ranks to start (ignored inside a launched job)")
      ->check(CLI::Range(1, 256));
  app->add_option("--min", a->min, "Smallest size in bytes (K, M, G suffixes)");
  app->add_option("--max", a->max, "Largest size in bytes");
  app->add_option("--dtype", a->dtype, "float32, float64, float16, bfloat16, int32, int64, uint8");
  app->add_option("--op", a->op, "sum, avg, min, max, prod");
  app->add_option("--iters", a->iters, "Timed calls per size (auto: about 0.3 s worth)")
      ->check(CLI::Range(0, 10000000))
      ->default_str("auto");
  app->add_option("--warmup", a->warmup, "Untimed calls per size first (auto: 100 below 64K, 5 above)")
      ->check(CLI::Range(-1, 100000))
      ->default_str("auto");
  app->add_option("--backend", a->backend, "shm, mpi or hier (these two under mpirun)")
      ->check(CLI::IsMember({"shm", "mpi", "hier"}));
  app->add_flag("--json", a->json, "One JSON object per size");
  app->add_flag("--secure", a->secure, "allreduce float32: through secure aggregation (masked fixed point, clip 64)");
  app->add_flag("--shared", a->shared,
                "allreduce in place on memory the group shares (Communicator::allocate_shared): no staging copies");
  app->add_option("--plot", a->plot, "Also draw bus bandwidth against size into this PNG");
  app->add_option("--peers", a->peers, "CSV of other libraries' figures to draw beside dagr's (label,bytes,busbw)");
  return {app, [a, argv] { return run_bench(*a, argv); }};
}

}  // namespace dagr::cli
