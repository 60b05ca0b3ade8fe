#include "linear_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

#include "dagr/parallel/tensor_parallel.h"
#include "dagr/train/compute_threads.h"

namespace dagr::cli {
namespace {

// Median ms of `iters` calls of `forward`, the slowest rank's, after 2 warm-up calls.
template <class F>
double median_ms(Communicator& comm, int iters, F&& forward) {
  for (int i = 0; i < 2; ++i) forward();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    forward();
    double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    comm.allreduce(std::span<double>(&t, 1), ReduceOp::max);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int bench_linear(const LinearBenchSpec& spec, bool json) {
  set_compute_threads(1);
  Communicator comm = Communicator::from_env();
  torch::NoGradGuard no_grad;
  const std::int64_t f = spec.features;
  auto x = torch::randn({spec.batch, f});
  comm.broadcast(std::span<float>(x.data_ptr<float>(), static_cast<std::size_t>(x.numel())), 0);

  // Dense, on rank 0 alone (the others wait, so it has the memory system to itself).
  double dense_ms = 0;
  {
    auto w = torch::randn({f, f}), b = torch::randn({f});
    const bool mine = comm.rank() == 0;
    dense_ms = median_ms(comm, spec.iters, [&] {
      if (mine) torch::nn::functional::linear(x, w, b);
    });
  }
  ColumnParallelLinear column(f, f, comm, /*gather_output=*/true);
  const double column_ms = median_ms(comm, spec.iters, [&] { column->forward(x); });
  column = nullptr;
  RowParallelLinear row(f, f, comm, /*input_is_parallel=*/false);
  const double row_ms = median_ms(comm, spec.iters, [&] { row->forward(x); });

  if (comm.rank() == 0) {
    if (json) {
      fmt::print("{}\n", nlohmann::json{{"features", f}, {"batch", spec.batch}, {"ranks", comm.size()},
                                        {"dense_ms", dense_ms}, {"column_parallel_ms", column_ms},
                                        {"row_parallel_ms", row_ms}}.dump());
    } else {
      fmt::print("# dagr bench linear: {0}×{0} layer, batch {1}, forward, {2} ranks (median of {3})\n", f, spec.batch,
                 comm.size(), spec.iters);
      fmt::print("  dense on 1 rank      {:9.2f} ms\n", dense_ms);
      fmt::print("  column-parallel      {:9.2f} ms   speed-up {:.2f}×\n", column_ms, dense_ms / column_ms);
      fmt::print("  row-parallel         {:9.2f} ms   speed-up {:.2f}×\n", row_ms, dense_ms / row_ms);
    }
  }
  return 0;
}

}  // namespace dagr::cli
