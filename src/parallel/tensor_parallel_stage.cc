#include "dagr/parallel/tensor_parallel_stage.h"

#include "dagr/error.h"
#include "dagr/parallel/tensor_parallel.h"

namespace dagr {
namespace {

torch::nn::LinearImpl* linear_with_bias(const std::shared_ptr<torch::nn::Module>& m) {
  auto* linear = m->as<torch::nn::LinearImpl>();
  return linear && linear->options.bias() ? linear : nullptr;
}

// The hidden width of the Linear → ReLU → Linear run that starts at layer i:
// both Linears have a bias and the second takes the first's output; 0 when
// no run starts there.
std::int64_t run_at(const torch::nn::Sequential& dense, std::size_t i) {
  if (i + 2 >= dense->size()) return 0;
  auto* first = linear_with_bias(dense->ptr(i));
  auto* second = linear_with_bias(dense->ptr(i + 2));
  if (!first || !second || !dense->ptr(i + 1)->as<torch::nn::ReLUImpl>()) return 0;
  return second->weight.size(1) == first->weight.size(0) ? first->weight.size(0) : 0;
}

}  // namespace

std::vector<std::int64_t> splittable_widths(const torch::nn::Sequential& dense) {
  std::vector<std::int64_t> widths;
  for (std::size_t i = 0; i < dense->size(); ++i)
    if (const std::int64_t w = run_at(dense, i)) {
      widths.push_back(w);
      i += 2;
    }
  return widths;
}

void check_tensor_split(const torch::nn::Sequential& model, const std::vector<StageBounds>& bounds, int tensor) {
  int runs = 0;
  for (const StageBounds& b : bounds)
    for (const std::int64_t width : splittable_widths(make_stage(model, b))) {
      DAGR_ENFORCE(width >= tensor, InputError, "--tensor-parallel ", tensor, ": a stage's Linear → ReLU → Linear "
                   "run meets in ", width, " features, too few to split");
      ++runs;
    }
  DAGR_ENFORCE(runs > 0, InputError, "--tensor-parallel ", tensor, " with --pipeline-parallel ", bounds.size(),
               ": no stage of this cut holds a Linear → ReLU → Linear run to split (the deep-mlp has them)");
}

// One pass over the layers: where a Linear → ReLU → Linear run starts (run_at),
// its two Linears become a column-parallel and a row-parallel layer around
// the same ReLU module, and the pass goes on after them; any other layer is
// kept whole.
TensorParallelStage::TensorParallelStage(const torch::nn::Sequential& dense, Communicator group)
    : group_(std::move(group)) {
  torch::NoGradGuard no_grad;
  const std::size_t n = dense->size();
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t hidden = run_at(dense, i);
    if (hidden == 0) {
      module_->push_back(*(dense->begin() + static_cast<std::ptrdiff_t>(i)));
      for (std::size_t k = 0; k < dense->ptr(i)->parameters().size(); ++k) splits_.push_back({});
      continue;
    }
    auto* first = linear_with_bias(dense->ptr(i));
    auto* second = linear_with_bias(dense->ptr(i + 2));
    DAGR_ENFORCE(hidden >= group_.size(), InputError, "tensor parallelism: layers ", i, " and ", i + 2, " meet in ",
                 hidden, " features, too few to split over ", group_.size(), " ranks");
    module_->push_back(ColumnParallelLinear(first->weight, first->bias, group_, /*gather_output=*/false));
    module_->push_back(*(dense->begin() + static_cast<std::ptrdiff_t>(i + 1)));
    module_->push_back(RowParallelLinear(second->weight, second->bias, group_, /*input_is_parallel=*/true));
    // Column: weight and bias split by rows; row: weight split by columns, bias whole.
    splits_.insert(splits_.end(), {{0, hidden}, {0, hidden}, {1, hidden}, {}});
    i += 2;
  }
}

std::vector<torch::Tensor> TensorParallelStage::gather(const std::vector<torch::Tensor>& shards) {
  DAGR_ENFORCE(shards.size() == splits_.size(), InputError, "TensorParallelStage::gather: ", shards.size(),
               " tensors for ", splits_.size(), " parameters");
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> dense;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const Split& s = splits_[i];
    dense.push_back(s.dim < 0 ? shards[i] : gather_along(shards[i], s.dim, s.total, group_));
  }
  return dense;
}

std::vector<torch::Tensor> TensorParallelStage::shard(const std::vector<torch::Tensor>& dense) const {
  DAGR_ENFORCE(dense.size() == splits_.size(), InputError, "TensorParallelStage::shard: ", dense.size(),
               " tensors for ", splits_.size(), " parameters");
  std::vector<torch::Tensor> shards;
  for (std::size_t i = 0; i < dense.size(); ++i) {
    const Split& s = splits_[i];
    if (s.dim < 0) {
      shards.push_back(dense[i]);
      continue;
    }
    DAGR_ENFORCE(dense[i].dim() > s.dim && dense[i].size(s.dim) == s.total, InputError,
                 "TensorParallelStage::shard: tensor ", i, " is ", dense[i].sizes(), ", not ", s.total,
                 " long in dimension ", s.dim);
    const Shard part = shard_of(s.total, group_.size(), group_.rank());
    shards.push_back(dense[i].narrow(s.dim, part.begin, part.length).contiguous());
  }
  return shards;
}

void TensorParallelStage::gather_into(torch::nn::Sequential& dense) {
  const auto gathered = gather(module_->parameters());
  auto to = dense->parameters();
  DAGR_ENFORCE(to.size() == gathered.size(), InputError, "TensorParallelStage::gather_into: a Sequential of ",
               to.size(), " parameters, not ", gathered.size());
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < to.size(); ++i)
    if (!to[i].is_same(gathered[i])) to[i].copy_(gathered[i]);
}

}  // namespace dagr
