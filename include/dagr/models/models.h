// The built-in models: the MLP of the system description, a small CNN and a deeper MLP.
#pragma once

#include <torch/torch.h>

#include <string>

namespace dagr::models {

// mlp: Flatten, Linear(784, hidden), ReLU, Linear(hidden, 10)
// cnn: Conv(1,32,3) ReLU MaxPool2 Conv(32,64,3) ReLU MaxPool2 Flatten Linear(1600,128) ReLU Linear(128,10)
// deep-mlp: Flatten, Linear(784, hidden), ReLU, 7 × (Linear(hidden, hidden), ReLU), Linear(hidden, 10)
//   (the pipeline benchmarks' model: 9 layers to cut into stages)
// InputError for any other name.
torch::nn::Sequential make_model(const std::string& name, int hidden = 256);

}  // namespace dagr::models
