// Fashion-MNIST (or MNIST) as tensors, from a folder of IDX files.
#pragma once

#include <torch/torch.h>

#include <string>

namespace dagr::data {

// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

struct ImageSet {
  torch::Tensor images;  // [N, 1, 28, 28]: float32 normalised (load_image_set) or uint8 as stored (load_image_bytes)
  torch::Tensor labels;  // int64 [N], 0-9
};

// split: "train" or "t10k". Finds <split>-images-idx3-ubyte[.gz] and the labels;
// checks that they agree (count, 28×28 images, labels below 10).
ImageSet load_image_set(const std::string& dir, const std::string& split);

// The same, with the images left as stored (uint8, 0-255): a quarter of the
// memory, and no pass over the whole set at start-up (the training set's
// conversion is most of a worker's start-up time). Normalise each batch with
// normalize_images; the result is the same as load_image_set's, element for element.
ImageSet load_image_bytes(const std::string& dir, const std::string& split);

// uint8 images to float32, normalised with Fashion-MNIST's mean and std.
torch::Tensor normalize_images(const torch::Tensor& bytes);
// The images `rows` (int64 indices) of `bytes`, normalised: a batch, equal to
// normalize_images(bytes.index_select(0, rows)) in one pass.
torch::Tensor normalize_images(const torch::Tensor& bytes, const torch::Tensor& rows);

}  // namespace dagr::data
