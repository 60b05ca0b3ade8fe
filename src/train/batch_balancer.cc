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

void BatchBalancer::record(std::int64_t samples, std::int64_t window, double compute_s, double fixed_s,
                           double step_s) {
  if (skipped_ < kSkipped) {
    ++skipped_;
    return;
  }
  ++steps_;
  samples_ += samples;
  window_samples_ += window;
  compute_s_ += std::max(compute_s, 0.0);
  fixed_s_ += std::max(fixed_s, 0.0);
  step_s_ += std::max(step_s, 0.0);
}

std::array<double, 2> BatchBalancer::measurement() {
  const std::array<double, 2> m{steps_ > 0 ? fixed_s_ / static_cast<double>(steps_) : 0.0,
                                samples_ > 0 ? compute_s_ / static_cast<double>(samples_) : 0.0};
  period_cost_ = window_samples_ > 0 ? step_s_ / static_cast<double>(window_samples_) : 0.0;
  period_step_s_ = steps_ > 0 ? step_s_ / static_cast<double>(steps_) : 0.0;
  steps_ = samples_ = window_samples_ = 0;
  compute_s_ = fixed_s_ = step_s_ = 0;
  return m;
}

// T = (W + Σ a_r/c_r) / Σ 1/c_r and n_r = (T − a_r)/c_r (the header's model);
// empty when some rank has no positive cost per sample (it took no measured step).
std::vector<double> BatchBalancer::model_split(std::span<const double> measurements, std::int64_t window) {
  DAGR_ENFORCE(measurements.size() >= 2 && measurements.size() % 2 == 0, InputError, "batch balancer: ",
               measurements.size(), " measurements");
  DAGR_ENFORCE(window >= 1, InputError, "batch balancer: a window of ", window, " samples");
  const std::size_t world = measurements.size() / 2;
  double inverse_sum = 0, fixed_sum = 0;
  for (std::size_t r = 0; r < world; ++r) {
    const double a = measurements[2 * r], c = measurements[2 * r + 1];
    if (!(std::isfinite(a) && std::isfinite(c) && a >= 0 && c > 0)) return {};
    inverse_sum += 1 / c;
    fixed_sum += a / c;
  }
  const double w = static_cast<double>(window), time = (w + fixed_sum) / inverse_sum;
  const double floor_share = 0.25 / static_cast<double>(world);
  std::vector<double> split(world);
  double sum = 0;
  for (std::size_t r = 0; r < world; ++r) {
    split[r] = std::max((time - measurements[2 * r]) / measurements[2 * r + 1] / w, floor_share);
    sum += split[r];
  }
  for (double& share : split) share /= sum;
  return split;
}

// Rank 0's trial and error (the header): judge the period that ended by its
// time per sample, keep or undo, then perhaps try a step towards the model.
// After an undo the kept split runs `wait_` more periods, then one that is
// the next trial's baseline.
std::vector<double> BatchBalancer::decide(std::span<const double> measurements, std::int64_t window) {
  const std::size_t world = shares_.size();
  DAGR_ENFORCE(measurements.size() == 2 * world, InputError, "batch balancer: ", measurements.size(),
               " measurements for ", world, " ranks");
  std::int64_t next_every = every_;
  if (period_step_s_ > 0)
    next_every = static_cast<std::int64_t>(std::clamp(std::ceil(kPeriodSeconds / period_step_s_), 20.0, 1e6));
  // The split every rank adopts (rank 0 too: adopt() changes shares_ alike everywhere).
  const auto decision = [&](std::vector<double> split) {
    split.push_back(static_cast<double>(next_every));
    return split;
  };
  if (!(period_cost_ > 0 && std::isfinite(period_cost_))) return decision(shares_);
  if (first_) {  // 20 steps just after the start: long enough to size the periods, too short to judge by
    first_ = false;
    return decision(shares_);
  }
  if (trying_ && period_cost_ > kept_cost_) {  // slower: back to the split it left, and wait longer
    trying_ = false;
    ++undone_;
    backoff_ = std::min(2 * backoff_, kMaxBackoff);
    wait_ = backoff_;
    return decision(kept_);
  }
  if (trying_) backoff_ = 1;
  kept_ = shares_;
  kept_cost_ = period_cost_;
  trying_ = false;
  if (wait_ > 0) {
    --wait_;
    return decision(shares_);
  }
  const std::vector<double> target = model_split(measurements, window);
  if (target.empty()) return decision(shares_);
  // Along the line to the model's split, no share moving more than kMaxMove:
  // both ends sum to 1, so every point between them does, and none overshoots.
  double distance = 0;
  for (std::size_t r = 0; r < world; ++r) distance = std::max(distance, std::abs(target[r] - shares_[r]));
  if (distance * static_cast<double>(window) < 1) return decision(shares_);  // not a whole sample from balanced already
  const double t = std::min(1.0, kMaxMove / distance);
  std::vector<double> trial = shares_;
  for (std::size_t r = 0; r < world; ++r) trial[r] += t * (target[r] - shares_[r]);
  trying_ = true;
  ++trials_;
  return decision(std::move(trial));
}

void BatchBalancer::adopt(std::span<const double> decision) {
  const std::size_t world = shares_.size();
  DAGR_ENFORCE(decision.size() == world + 1, InputError, "batch balancer: a decision of ", decision.size(),
               " numbers for ", world, " ranks");
  double sum = 0;
  for (std::size_t r = 0; r < world; ++r) {
    DAGR_ENFORCE(std::isfinite(decision[r]) && decision[r] > 0, InputError, "batch balancer: a share of ", decision[r]);
    sum += decision[r];
  }
  DAGR_ENFORCE(std::abs(sum - 1) < 1e-9, InputError, "batch balancer: shares summing to ", sum);
  DAGR_ENFORCE(decision[world] >= 1 && decision[world] <= 1e6, InputError, "batch balancer: a period of ",
               decision[world], " steps");
  // A new split's first step (new shapes: allocations) is left out of the measurement.
  if (!std::equal(shares_.begin(), shares_.end(), decision.begin())) skipped_ = std::min(skipped_, kSkipped - 1);
  shares_.assign(decision.begin(), decision.begin() + static_cast<std::ptrdiff_t>(world));
  every_ = static_cast<int>(decision[world]);
}

}  // namespace dagr
