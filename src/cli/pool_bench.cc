#include "pool_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

#include "dagr/models/max_pool.h"
#include "dagr/train/compute_threads.h"

namespace dagr::cli {
namespace {

// Median ms of `iters` calls of f, after 3 warm-up calls.
template <class F>
double median_ms(int iters, F&& f) {
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Times {
  double forward, backward;
};

// One layer's forward (recorded by autograd, as in training) and its backward
// (through the same graph, kept) on the ReLU of a normal sample: about half
// its inputs 0, as in the CNN.
Times time_layer(torch::nn::AnyModule layer, const torch::Tensor& input, int iters) {
  const auto x = input.detach().requires_grad_(true);
  torch::Tensor y;
  const double forward = median_ms(iters, [&] { y = layer.forward(x); });
  const auto g = torch::randn_like(y);
  const double backward = median_ms(iters, [&] {
    x.mutable_grad().reset();
    y.backward(g, /*retain_graph=*/true);
  });
  return {forward, backward};
}

}  // namespace

int bench_maxpool(const PoolBenchSpec& spec, bool json) {
  set_compute_threads(1);
  torch::manual_seed(0);
  if (!json)
    fmt::print("# dagr bench maxpool: the CNN's 2 × 2 poolings, batch {}, one thread (median of {}, ms)\n",
               spec.batch, spec.iters);
  for (const auto& [channels, side] : {std::pair<std::int64_t, std::int64_t>{32, 26}, {64, 11}}) {
    const auto x = torch::randn({spec.batch, channels, side, side}).relu();
    const Times t = time_layer(torch::nn::AnyModule(torch::nn::MaxPool2d(2)), x, spec.iters);
    const Times d = time_layer(torch::nn::AnyModule(nn::MaxPool2d(2)), x, spec.iters);
    if (json) {
      fmt::print("{}\n", nlohmann::json{{"batch", spec.batch},
                                        {"channels", channels},
                                        {"side", side},
                                        {"torch_forward_ms", t.forward},
                                        {"dagr_forward_ms", d.forward},
                                        {"torch_backward_ms", t.backward},
                                        {"dagr_backward_ms", d.backward}}
                             .dump());
    } else {
      fmt::print("  {:2} × {:2} × {:2}  forward  torch {:7.3f}  dagr {:7.3f}  speed-up {:5.2f}×\n", channels, side,
                 side, t.forward, d.forward, t.forward / d.forward);
      fmt::print("  {:14}backward torch {:7.3f}  dagr {:7.3f}  speed-up {:5.2f}×\n", "", t.backward, d.backward,
                 t.backward / d.backward);
    }
  }
  return 0;
}

}  // namespace dagr::cli
