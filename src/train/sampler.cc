#include "dagr/train/sampler.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "dagr/error.h"

namespace dagr {

DistributedSampler::DistributedSampler(const SamplerOptions& o) : options_(o) {
  DAGR_ENFORCE(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, InputError, "sampler: rank ",
               o.rank, " is not in a world of ", o.world_size);
  DAGR_ENFORCE(o.dataset_size >= (o.drop_last ? o.world_size : 1), InputError, "sampler: ",
               o.dataset_size, " samples cannot be shared by ", o.world_size, " ranks");
  per_rank_ = o.drop_last ? o.dataset_size / o.world_size
                          : (o.dataset_size + o.world_size - 1) / o.world_size;
  set_epoch(0);
}

void DistributedSampler::set_epoch(std::int64_t epoch) {
  std::vector<std::int64_t>& all = order_;
  all.resize(static_cast<std::size_t>(options_.dataset_size));
  std::iota(all.begin(), all.end(), 0);
  if (options_.shuffle) {
    // Fisher-Yates with our own index draw: the same order with every standard library.
    std::mt19937_64 gen(options_.seed * 1000003u + static_cast<std::uint64_t>(epoch));
    for (std::size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[gen() % i]);
  }
  const std::size_t total = static_cast<std::size_t>(per_rank_ * options_.world_size);
  for (std::size_t i = all.size(); i < total; ++i) all.push_back(all[i - static_cast<std::size_t>(options_.dataset_size)]);
  all.resize(total);
  indices_.clear();
  for (std::size_t i = static_cast<std::size_t>(options_.rank); i < total; i += static_cast<std::size_t>(options_.world_size))
    indices_.push_back(all[i]);
}

std::int64_t DistributedSampler::steps_per_epoch(std::int64_t batch_size) const {
  DAGR_ENFORCE(batch_size >= 1, InputError, "batch size must be positive, not ", batch_size);
  return (per_rank_ + batch_size - 1) / batch_size;
}

std::vector<std::int64_t> DistributedSampler::batch(std::int64_t step, std::int64_t batch_size) const {
  DAGR_ENFORCE(step >= 0 && step < steps_per_epoch(batch_size), InputError, "step ", step,
               " is outside this epoch's ", steps_per_epoch(batch_size), " steps");
  const auto begin = indices_.begin() + step * batch_size;
  const auto end = indices_.begin() + std::min<std::int64_t>(per_rank_, (step + 1) * batch_size);
  return {begin, end};
}

}  // namespace dagr
