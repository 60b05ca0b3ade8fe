// The model one rank runs: the dense built-in model, or the MLP split over a
// tensor-parallel group. Training and inference see only this.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dagr/parallel/groups.h"

namespace dagr::train {

struct Network {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  // The whole model as the dense built-in model (collective over the tensor group).
  std::function<torch::nn::Sequential()> dense;
  // Takes this rank's part of a dense model's parameters and buffers.
  std::function<void(torch::nn::Sequential&)> load_dense;
};

// Tensors shaped like module->parameters(), in its order (e.g. optimizer
// moments), as they would be for the dense model's parameters, in its order
// (collective over the tensor group); and back. The model's own parameters
// carry them through dense() / load_dense(), and are restored after.
std::vector<torch::Tensor> gather_like_parameters(Network& net, const std::vector<torch::Tensor>& shards);
std::vector<torch::Tensor> shard_like_parameters(Network& net, const std::vector<torch::Tensor>& dense);

// A fresh model; with groups.tensor.size() > 1 only the MLP can be split.
Network make_network(const std::string& model, int hidden, int depth, const ParallelGroups& groups);
// The model saved in `path` by dagr train (a dense checkpoint), whole (InputError
// when the file is not that model, at that depth for the deep-mlp); and sharded
// over groups.tensor.
torch::nn::Sequential load_dense_model(const std::string& model, int depth, const std::string& path);
Network load_network(const std::string& model, int depth, const std::string& path, const ParallelGroups& groups);

// Test accuracy: each data group evaluates every D-th sample; counts summed over the world.
double evaluate(Network& net, const torch::Tensor& images, const torch::Tensor& labels, const ParallelGroups& groups,
                Communicator& world);

}  // namespace dagr::train
