// dagr::BatchBalancer — each step's global batch split among the data-parallel
// ranks by their measured speed (`dagr train --balance-batch`).
//
// A synchronous step goes at its slowest rank's pace: with an equal split, a
// rank on a slower core makes every other rank wait for it at each step's last
// allreduce. The balancer gives the slower rank fewer of the step's samples
// instead, so that all ranks reach the allreduce together.
//
// The model: rank r's step takes a_r + c_r·n_r seconds for n_r samples, a_r
// for what does not grow with the batch (the trainer measures the optimizer
// step) and c_r per sample (the rest of the step: loading, forward, backward,
// divided by its samples), both measured on the rank itself with the time it
// was blocked on communication left out. The split that makes every rank's
// step take the same time T is
//   a_r + c_r·n_r = T and Σ n_r = W  →  T = (W + Σ a_r/c_r) / Σ 1/c_r,  n_r = (T − a_r) / c_r,
// each share n_r / W raised to a quarter of the equal share at least (then
// all scaled to sum to 1).
//
// The model can be wrong: a rank whose core is time-shared with a busy process
// runs slower the busier it is (the kernel's scheduler favours a task that
// sleeps), so giving it fewer samples can make the other rank the slow one,
// and the job slower (the MLP at 0.56× an equal split's speed, measured). So
// each new split is a trial, judged by what counts: rank 0's step time per
// sample of the global batch, over a measurement period. A trial at least as
// fast as the split it left is kept (and the next one tried); a slower one is
// undone, and the next trial comes 3, 5, 9, … 17 periods later. Each trial
// moves the shares along the line to the model's split, none by more than
// 0.05, so a wrong move costs little before it is undone; a split less than a
// sample of the window away is no trial.
//
// A period is `every` steps (20 at first, which only size the next: as many
// steps as make about 0.5 s of rank 0's time, at least 20). At its end every rank sends
// rank 0 its (a_r, c_r) (an allgather), rank 0 decides() and broadcasts the
// shares and the next period's length, and every rank adopts() them: one
// rounding for all, whatever each rank's build. Each balancer skips its first
// 3 steps (allocations, DDP's bucket rebuild after its first step), and the
// first step of every new split (new shapes). A window of
// W samples is cut into whole numbers by largest remainders, each rank at
// least one sample: the same cut on every rank, and the windows' union is
// exactly the step's samples.
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
  // `every`: steps in the first measurement period.
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

  // This rank's step: `samples` of its `window`, `compute_s` seconds growing
  // with them, `fixed_s` seconds that do not, `step_s` in all (waits
  // included). Call it at every step (the first kSkipped are left out).
  void record(std::int64_t samples, std::int64_t window, double compute_s, double fixed_s, double step_s);
  static constexpr int kSkipped = 3;
  // Whether this step ends a period: then every rank calls measurement(), and
  // adopts rank 0's decision, in the same step.
  bool due() const { return steps_ >= every_; }
  // This rank's (a, c) over the period; starts the next.
  std::array<double, 2> measurement();
  // Rank 0: everyone's measurements, rank by rank (a_0, c_0, a_1, c_1, …), for
  // steps of `window` samples. Returns what every rank adopts: the shares,
  // then the next period's steps.
  std::vector<double> decide(std::span<const double> measurements, std::int64_t window);
  void adopt(std::span<const double> decision);

  // The split the model gives for these measurements (the header's formula).
  static std::vector<double> model_split(std::span<const double> measurements, std::int64_t window);

  const std::vector<double>& shares() const { return shares_; }
  // Rank 0: the split last kept (not a trial still being judged).
  const std::vector<double>& kept_shares() const { return trying_ ? kept_ : shares_; }
  std::int64_t trials() const { return trials_; }
  std::int64_t undone() const { return undone_; }

  static constexpr double kMaxMove = 0.05, kPeriodSeconds = 0.5;  // a trial's largest move; a period's length
  static constexpr int kMaxBackoff = 16;

 private:
  int every_;
  std::vector<double> shares_;  // sum to 1
  // Rank 0's trial: the split it left and that split's time per sample.
  std::vector<double> kept_;
  double kept_cost_ = 0;
  bool first_ = true, trying_ = false;
  int backoff_ = 1, wait_ = 0;
  std::int64_t trials_ = 0, undone_ = 0;
  // The period so far.
  int skipped_ = 0;
  std::int64_t steps_ = 0, samples_ = 0, window_samples_ = 0;
  double compute_s_ = 0, fixed_s_ = 0, step_s_ = 0;
  // The last period's step time per window sample and per step (measurement() keeps them).
  double period_cost_ = 0, period_step_s_ = 0;
};

}  // namespace dagr
