// dagr::BatchBalancer — each step's global batch split among the data-parallel
// ranks by their measured speed (`dagr train --balance-batch`).
//
// A synchronous step goes at its slowest rank's pace: with an equal split, a
// rank on a slower core (or on a core it shares with another process) makes
// every other rank wait for it at each step's last allreduce. The balancer
// gives the slower rank fewer of the step's samples instead, so that all ranks
// reach the allreduce together.
//
// The model: rank r's step takes a_r + c_r·n_r seconds for n_r samples, a_r
// for what does not grow with the batch (the optimizer step, per-step
// overheads) and c_r per sample (loading, forward, backward), both measured on
// the rank itself with the time it was blocked on communication left out. Every
// `every` steps the ranks exchange their (a_r, c_r) (an allgather, so every
// rank holds the same numbers) and each computes the same split: the n_r that
// make every rank's step take the same time T,
//   a_r + c_r·n_r = T and Σ n_r = W  →  T = (W + Σ a_r/c_r) / Σ 1/c_r,  n_r = (T − a_r) / c_r,
// as shares of W, each raised to a quarter of the equal share at least (then all
// scaled to sum to 1). The new shares are the mean of the old and these
// (measurements are noisy; a lasting change is followed within a few
// exchanges). A window of W samples is cut into whole numbers
// by largest remainders, each rank at least one sample: the same cut on every
// rank, and the windows' union is exactly the step's samples.
//
// Torch-free; the trainer measures and exchanges, this class only computes.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace dagr {

class BatchBalancer {
 public:
  // `every`: steps between exchanges (and the steps a measurement covers).
  BatchBalancer(int world_size, int every = 20);

  struct Slice {
    std::int64_t begin = 0, count = 0;  // within the step's window
  };
  // Rank `rank`'s samples of a window of `window` ≥ world_size samples.
  Slice slice(int rank, std::int64_t window) const;
  // What a rank multiplies its mean loss over `samples` of the step's `window`
  // by, so that DDP's average over `world_size` ranks is the mean over the
  // window: samples·world_size / window (1 for an equal share).
  static double loss_weight(std::int64_t samples, std::int64_t window, int world_size) {
    return static_cast<double>(samples * world_size) / static_cast<double>(window);
  }

  // This rank's step of `samples` samples: `compute_s` seconds growing with
  // them, `fixed_s` seconds that do not.
  void record(std::int64_t samples, double compute_s, double fixed_s);
  // Whether this step ends a measurement: then every rank calls measurement()
  // and rebalance() with everyone's, in the same step.
  bool due() const { return steps_ >= every_; }
  // This rank's (a, c) over the steps since the last exchange; starts the next.
  std::array<double, 2> measurement();
  // Everyone's measurements, rank by rank (a_0, c_0, a_1, c_1, …), for steps
  // of `window` samples in all.
  void rebalance(std::span<const double> measurements, std::int64_t window);

  const std::vector<double>& shares() const { return shares_; }
  std::int64_t rebalances() const { return rebalances_; }

 private:
  int every_;
  std::vector<double> shares_;  // sum to 1
  std::int64_t rebalances_ = 0;
  std::int64_t steps_ = 0, samples_ = 0;
  double compute_s_ = 0, fixed_s_ = 0;
};

}  // namespace dagr
