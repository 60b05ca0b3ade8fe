// Tensor-parallel layers — the system's formula taken literally:
//   compute(x) = Σ_i compute_i(x_i)
//
// ColumnParallelLinear: rank i holds rows W_i of the weight (a slice of the
// output features) and computes y_i = x W_iᵀ + b_i; the slices are gathered
// (or left sharded for a following RowParallelLinear). RowParallelLinear:
// rank i holds columns W_i (a slice of the input features) and computes the
// partial product x_i W_iᵀ; an allreduce sums the parts, and the bias is added
// once. Each forward collective has its conjugate in backward (identity ↔
// allreduce, gather ↔ slice), so loss.backward() just works.
//
// Feature counts need not divide by the group size: the first (n mod T) ranks
// hold one feature more.
#pragma once

#include <torch/torch.h>

#include "dagr/comm/communicator.h"

namespace dagr {

// [begin, begin + length) of `total` features held by `rank` of `ranks`.
struct Shard {
  std::int64_t begin, length;
};
Shard shard_of(std::int64_t total, int ranks, int rank);

// Every rank's slice of dimension `dim` (shard_of(total, …) each), joined in
// rank order: the dense tensor (collective over `group`).
torch::Tensor gather_along(const torch::Tensor& local, std::int64_t dim, std::int64_t total, Communicator& group);

class ColumnParallelLinearImpl : public torch::nn::Module {
 public:
  ColumnParallelLinearImpl(std::int64_t in, std::int64_t out, Communicator group, bool gather_output = true);
  // This rank's rows of a dense layer's [out, in] weight and [out] bias
  // (every rank of the group passes the same ones; nothing is drawn or sent).
  ColumnParallelLinearImpl(const torch::Tensor& weight, const torch::Tensor& bias, Communicator group,
                           bool gather_output = true);
  torch::Tensor forward(const torch::Tensor& x);
  // Takes this rank's rows of a dense [out, in] weight and [out] bias.
  void load_dense(const torch::Tensor& weight, const torch::Tensor& bias);
  // The dense weight and bias, gathered from every rank of the group.
  std::pair<torch::Tensor, torch::Tensor> gather_dense();

  torch::Tensor weight, bias;  // this rank's shard: [out_i, in], [out_i]

 private:
  void register_shard(const torch::Tensor& weight, const torch::Tensor& bias);  // and load it
  std::int64_t in_, out_;
  Communicator group_;
  bool gather_output_;
};
TORCH_MODULE(ColumnParallelLinear);

class RowParallelLinearImpl : public torch::nn::Module {
 public:
  RowParallelLinearImpl(std::int64_t in, std::int64_t out, Communicator group, bool input_is_parallel = false);
  // This rank's columns of a dense layer's weight, and its whole bias.
  RowParallelLinearImpl(const torch::Tensor& weight, const torch::Tensor& bias, Communicator group,
                        bool input_is_parallel = false);
  torch::Tensor forward(const torch::Tensor& x);
  void load_dense(const torch::Tensor& weight, const torch::Tensor& bias);  // this rank's columns
  std::pair<torch::Tensor, torch::Tensor> gather_dense();

  torch::Tensor weight, bias;  // [out, in_i], [out] (the same on every rank)

 private:
  void register_shard(const torch::Tensor& weight, const torch::Tensor& bias);  // and load it
  std::int64_t in_, out_;
  Communicator group_;
  bool input_is_parallel_;
};
TORCH_MODULE(RowParallelLinear);

// The seed's MLP split over a group: Flatten, Column(784→hidden, sharded
// output), ReLU, Row(hidden→10, parallel input): one allreduce forward, one backward.
class TensorParallelMlpImpl : public torch::nn::Module {
 public:
  TensorParallelMlpImpl(std::int64_t hidden, Communicator group);
  torch::Tensor forward(const torch::Tensor& x);
  // From / to the dense model models::make_model("mlp", hidden) (e.g. a dagr train checkpoint).
  void load_dense(torch::nn::Sequential& dense);
  void gather_into(torch::nn::Sequential& dense);

  ColumnParallelLinear fc1{nullptr};
  RowParallelLinear fc2{nullptr};
};
TORCH_MODULE(TensorParallelMlp);

}  // namespace dagr
