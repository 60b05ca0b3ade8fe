// Fashion-MNIST (or MNIST) as tensors, from a folder of IDX files.
#pragma once

#include <torch/torch.h>

#include <string>

namespace dagr::data {

// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

struct ImageSet {
  torch::Tensor images;  // float32 [N, 1, 28, 28], normalised with Fashion-MNIST's mean and std
  torch::Tensor labels;  // int64 [N], 0-9
};

// split: "train" or "t10k". Finds <split>-images-idx3-ubyte[.gz] and the labels;
// checks that they agree (count, 28×28 images, labels below 10).
ImageSet load_image_set(const std::string& dir, const std::string& split);

}  // namespace dagr::data
