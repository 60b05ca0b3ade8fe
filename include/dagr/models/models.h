// The built-in models: the MLP of the system description, a small CNN and a deeper MLP.
#pragma once

#include <torch/torch.h>

#include <string>

namespace dagr::models {

// mlp: Flatten, Linear(784, hidden), ReLU, Linear(hidden, 10)
// cnn: Conv(1,32,3) ReLU MaxPool2 Conv(32,64,3) ReLU MaxPool2 Flatten Linear(1600,128) ReLU Linear(128,10)
// deep-mlp: Flatten, Linear(784, hidden), ReLU, (depth − 1) × (Linear(hidden, hidden), ReLU), Linear(hidden, 10)
//   (the pipeline benchmarks' model: depth hidden layers, depth + 1 Linear layers to cut into stages;
//   the other models ignore depth)
// InputError for any other name, a hidden size or depth below 1.
// Their Linear layers are dagr::nn::Linear (linear.h): torch's layer, whose
// gradients DDP need not copy into its buckets; the CNN's poolings are
// dagr::nn::MaxPool2d (max_pool.h): torch's, with the same results in a
// tenth of the time.
constexpr int kDefaultDepth = 8;
torch::nn::Sequential make_model(const std::string& name, int hidden = 256, int depth = kDefaultDepth);

}  // namespace dagr::models
