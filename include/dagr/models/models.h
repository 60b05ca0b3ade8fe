// The built-in models: the MLP of the system description and a small CNN.
#pragma once

#include <torch/torch.h>

#include <string>

namespace dagr::models {

// mlp: Flatten, Linear(784, hidden), ReLU, Linear(hidden, 10)
// cnn: Conv(1,32,3) ReLU MaxPool2 Conv(32,64,3) ReLU MaxPool2 Flatten Linear(1600,128) ReLU Linear(128,10)
// InputError for any other name.
torch::nn::Sequential make_model(const std::string& name, int hidden = 256);

}  // namespace dagr::models
