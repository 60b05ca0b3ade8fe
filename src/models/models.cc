#include "dagr/models/models.h"

#include "dagr/error.h"
#include "dagr/models/linear.h"
#include "dagr/models/max_pool.h"

namespace dagr::models {

torch::nn::Sequential make_model(const std::string& name, int hidden, int depth) {
  namespace nn = torch::nn;
  using dagr::nn::Linear;     // torch's, writing its gradients straight into DDP's buckets
  using dagr::nn::MaxPool2d;  // torch's, its 2 × 2 windows in loops ~10× faster than libtorch 1.13's
  if (name == "mlp") {
    DAGR_ENFORCE(hidden >= 1, InputError, "hidden size must be positive, not ", hidden);
    return nn::Sequential(nn::Flatten(), Linear(784, hidden), nn::ReLU(), Linear(hidden, 10));
  }
  if (name == "cnn")
    return nn::Sequential(nn::Conv2d(nn::Conv2dOptions(1, 32, 3)), nn::ReLU(), MaxPool2d(2),
                          nn::Conv2d(nn::Conv2dOptions(32, 64, 3)), nn::ReLU(), MaxPool2d(2),
                          nn::Flatten(), Linear(64 * 5 * 5, 128), nn::ReLU(), Linear(128, 10));
  if (name == "deep-mlp") {
    DAGR_ENFORCE(hidden >= 1, InputError, "hidden size must be positive, not ", hidden);
    DAGR_ENFORCE(depth >= 1, InputError, "depth must be positive, not ", depth);
    nn::Sequential model(nn::Flatten(), Linear(784, hidden), nn::ReLU());
    for (int i = 1; i < depth; ++i) {
      model->push_back(Linear(hidden, hidden));
      model->push_back(nn::ReLU());
    }
    model->push_back(Linear(hidden, 10));
    return model;
  }
  throw InputError(detail::concat("unknown model '", name, "' (mlp, cnn, deep-mlp)"));
}

}  // namespace dagr::models
