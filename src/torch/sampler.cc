#include "dagr/torch/sampler.h"

#include <algorithm>

#include "dagr/error.h"

namespace dagr {

DataLoaderSampler::DataLoaderSampler(const SamplerOptions& options) : options_(options), sampler_(options) {}

void DataLoaderSampler::set_epoch(std::int64_t epoch) {
  DAGR_ENFORCE(epoch >= 0, InputError, "sampler: epoch ", epoch, " is negative");
  next_epoch_ = epoch;
}

void DataLoaderSampler::reset(torch_compat::SizeOptional new_size) {
  if (new_size && static_cast<std::int64_t>(*new_size) != options_.dataset_size) {
    options_.dataset_size = static_cast<std::int64_t>(*new_size);
    sampler_ = DistributedSampler(options_);
  }
  start(next_epoch_ ? *next_epoch_ : started_ ? epoch_ + 1 : epoch_);
}

void DataLoaderSampler::start(std::int64_t epoch) {
  epoch_ = epoch;
  next_epoch_.reset();
  started_ = true;
  sampler_.set_epoch(epoch_);
  position_ = 0;
}

torch_compat::BatchOptional DataLoaderSampler::next(std::size_t batch_size) {
  DAGR_ENFORCE(batch_size >= 1, InputError, "sampler: batch size must be positive");
  const auto& indices = sampler_.indices();
  if (position_ >= indices.size()) return {};
  const std::size_t end = std::min(indices.size(), position_ + batch_size);
  std::vector<std::size_t> batch(indices.begin() + static_cast<std::ptrdiff_t>(position_),
                                 indices.begin() + static_cast<std::ptrdiff_t>(end));
  position_ = end;
  return batch;
}

void DataLoaderSampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("epoch", torch::tensor(epoch_, torch::kInt64), /*is_buffer=*/true);
  archive.write("position", torch::tensor(static_cast<std::int64_t>(position_), torch::kInt64), true);
  archive.write("started", torch::tensor(static_cast<std::int64_t>(started_), torch::kInt64), true);
}

void DataLoaderSampler::load(torch::serialize::InputArchive& archive) {
  torch::Tensor epoch, position, started;
  archive.read("epoch", epoch, /*is_buffer=*/true);
  archive.read("position", position, true);
  archive.read("started", started, true);
  start(epoch.item<std::int64_t>());
  started_ = started.item<std::int64_t>() != 0;
  const auto at = position.item<std::int64_t>();
  DAGR_ENFORCE(at >= 0 && static_cast<std::size_t>(at) <= sampler_.indices().size(), InputError,
               "sampler: saved position ", at, " is outside this rank's ", sampler_.indices().size(), " indices");
  position_ = static_cast<std::size_t>(at);
}

}  // namespace dagr
