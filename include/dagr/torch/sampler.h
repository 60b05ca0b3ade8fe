// dagr::DataLoaderSampler — dagr::DistributedSampler as a torch data sampler,
// for torch::data::make_data_loader:
//
//   dagr::DataLoaderSampler sampler({.dataset_size = n, .rank = comm.rank(),
//                                    .world_size = comm.size(), .seed = 1});
//   auto loader = torch::data::make_data_loader(dataset.map(torch::data::transforms::Stack<>()),
//                                               sampler, torch::data::DataLoaderOptions(64));
//   for (int epoch = 0; epoch < epochs; ++epoch)
//     for (auto& batch : *loader) { ... }   // epoch e's order, this rank's share
//
// The loader calls reset() at the start of each pass over it; each reset()
// after the first moves on to the next epoch, whose order (shuffled from
// (seed, epoch), as DistributedSampler) is the same on every rank, so the
// ranks stay in step without being told the epoch. set_epoch(e) makes the
// next pass epoch e: call it before handing the sampler to make_data_loader,
// which keeps a copy of its own, to resume at epoch e. next(b) hands out this
// rank's indices b at a time; the last batch may be short, and every rank
// takes the same number of batches.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "dagr/torch/compat.h"
#include "dagr/train/sampler.h"

namespace dagr {

class DataLoaderSampler : public torch_compat::Sampler {
 public:
  explicit DataLoaderSampler(const SamplerOptions& options);

  // The epoch the next pass (the next reset()) takes.
  void set_epoch(std::int64_t epoch);
  // The epoch of the indices next() hands out.
  std::int64_t epoch() const { return epoch_; }

  // Starts the next epoch; `new_size` changes the data set's size.
  void reset(torch_compat::SizeOptional new_size = {}) override;
  // This rank's next `batch_size` indices of the epoch; none when it is used up.
  torch_compat::BatchOptional next(std::size_t batch_size) override;

  // The epoch and the position in it (the options are the constructor's).
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  void start(std::int64_t epoch);

  SamplerOptions options_;
  DistributedSampler sampler_;
  std::int64_t epoch_ = 0;
  std::optional<std::int64_t> next_epoch_;  // set by set_epoch, else epoch_ + 1 (epoch_ before any pass)
  bool started_ = false;
  std::size_t position_ = 0;
};

}  // namespace dagr
