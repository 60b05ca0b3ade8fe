#include "dagr/train/batch_balancer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "dagr/error.h"

namespace dagr {

BatchBalancer::BatchBalancer(int world_size, int every)
    : every_(every), shares_(static_cast<std::size_t>(world_size), 1.0 / world_size) {
  DAGR_ENFORCE(world_size >= 1, InputError, "batch balancer: world size ", world_size);
  DAGR_ENFORCE(every >= 1, InputError, "batch balancer: ", every, " steps between exchanges");
}

// Whole numbers by largest remainders: each rank first gets the floor of its
// share of the window, then the samples left go one each to the ranks with the
// largest fractions (ties to the lower rank); a rank left with none takes one
// from the rank with the most.
BatchBalancer::Slice BatchBalancer::slice(int rank, std::int64_t window) const {
  const std::size_t world = shares_.size();
  DAGR_ENFORCE(rank >= 0 && static_cast<std::size_t>(rank) < world, InputError, "batch balancer: rank ", rank,
               " is not in a world of ", world);
  DAGR_ENFORCE(window >= static_cast<std::int64_t>(world), InputError, "batch balancer: a window of ", window,
               " samples cannot be shared by ", world, " ranks");
  std::vector<std::int64_t> counts(world);
  std::vector<double> fractions(world);
  std::int64_t left = window;
  for (std::size_t r = 0; r < world; ++r) {
    const double exact = shares_[r] * static_cast<double>(window);
    counts[r] = std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(exact)), left);
    fractions[r] = exact - static_cast<double>(counts[r]);
    left -= counts[r];
  }
  std::vector<std::size_t> order(world);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return fractions[a] > fractions[b]; });
  for (std::size_t i = 0; left > 0; i = (i + 1) % world, --left) ++counts[order[i]];
  for (std::size_t r = 0; r < world; ++r)
    if (counts[r] == 0) {
      --counts[static_cast<std::size_t>(std::max_element(counts.begin(), counts.end()) - counts.begin())];
      counts[r] = 1;
    }
  const auto r = static_cast<std::size_t>(rank);
  return {std::accumulate(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(r), std::int64_t{0}), counts[r]};
}

void BatchBalancer::record(std::int64_t samples, double compute_s, double fixed_s) {
  ++steps_;
  samples_ += samples;
  compute_s_ += std::max(compute_s, 0.0);
  fixed_s_ += std::max(fixed_s, 0.0);
}

std::array<double, 2> BatchBalancer::measurement() {
  const std::array<double, 2> m{steps_ > 0 ? fixed_s_ / static_cast<double>(steps_) : 0.0,
                                samples_ > 0 ? compute_s_ / static_cast<double>(samples_) : 0.0};
  steps_ = samples_ = 0;
  compute_s_ = fixed_s_ = 0;
  return m;
}

// T = (W + Σ a_r/c_r) / Σ 1/c_r and n_r = (T − a_r)/c_r (the header's model).
// A measurement without a positive cost per sample (a rank that took no step
// since the last exchange) leaves the shares as they are.
void BatchBalancer::rebalance(std::span<const double> measurements, std::int64_t window) {
  const std::size_t world = shares_.size();
  DAGR_ENFORCE(measurements.size() == 2 * world, InputError, "batch balancer: ", measurements.size(),
               " measurements for ", world, " ranks");
  DAGR_ENFORCE(window >= 1, InputError, "batch balancer: a window of ", window, " samples");
  double inverse_sum = 0, fixed_sum = 0;
  for (std::size_t r = 0; r < world; ++r) {
    const double a = measurements[2 * r], c = measurements[2 * r + 1];
    if (!(std::isfinite(a) && std::isfinite(c) && a >= 0 && c > 0)) return;
    inverse_sum += 1 / c;
    fixed_sum += a / c;
  }
  const double w = static_cast<double>(window), time = (w + fixed_sum) / inverse_sum;
  const double floor_share = 0.25 / static_cast<double>(world);
  std::vector<double> target(world);
  double sum = 0;
  for (std::size_t r = 0; r < world; ++r) {
    const double a = measurements[2 * r], c = measurements[2 * r + 1];
    target[r] = std::max((time - a) / c / w, floor_share);
    sum += target[r];
  }
  for (std::size_t r = 0; r < world; ++r) shares_[r] = 0.5 * shares_[r] + 0.5 * target[r] / sum;
  ++rebalances_;
}

}  // namespace dagr
