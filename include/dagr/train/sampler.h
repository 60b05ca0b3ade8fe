// dagr::DistributedSampler — which samples each rank trains on (as PyTorch's).
//
// Each epoch, the indices 0..N-1 are shuffled with a seed derived from (seed,
// epoch), identically on every rank; the list is padded with its own first
// indices to a multiple of the world size (or cut to one, with drop_last) and
// rank r takes every world-th index starting at r. So every rank takes the same
// number of steps, and the ranks' batches at step k together are exactly the
// batch of world·b samples one process would take at step k: elements
// k·world·b to (k+1)·world·b of the padded order (epoch_order()), which is
// what a split other than rank-strided (BatchBalancer) cuts up.
#pragma once

#include <cstdint>
#include <vector>

namespace dagr {

struct SamplerOptions {
  std::int64_t dataset_size = 0;
  int rank = 0;
  int world_size = 1;
  std::uint64_t seed = 0;
  bool shuffle = true;
  bool drop_last = false;  // false: pad by repeating the first indices
};

class DistributedSampler {
 public:
  explicit DistributedSampler(const SamplerOptions& options);

  void set_epoch(std::int64_t epoch);
  std::int64_t samples_per_rank() const { return per_rank_; }
  std::int64_t steps_per_epoch(std::int64_t batch_size) const;  // the last batch may be short
  // This rank's indices for the current epoch.
  const std::vector<std::int64_t>& indices() const { return indices_; }
  // The current epoch's order for all ranks, padded (or cut) to world·samples_per_rank().
  const std::vector<std::int64_t>& epoch_order() const { return order_; }
  // The indices of one step; resuming at a step is asking for it.
  std::vector<std::int64_t> batch(std::int64_t step, std::int64_t batch_size) const;

 private:
  SamplerOptions options_;
  std::int64_t per_rank_;
  std::vector<std::int64_t> order_, indices_;
};

}  // namespace dagr
