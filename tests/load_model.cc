// Loads a model saved by `dagr train` with torch::load and checks it predicts:
// load_model mlp|cnn FILE. Exit 0 when it loads and gives finite logits.
#include <cstdio>

#include "dagr/models/models.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  try {
    auto model = dagr::models::make_model(argv[1]);
    torch::load(model, argv[2]);
    model->eval();
    const auto logits = model->forward(torch::zeros({4, 1, 28, 28}));
    const bool ok = logits.sizes() == torch::IntArrayRef({4, 10}) && logits.isfinite().all().item<bool>();
    std::printf("%s\n", ok ? "loaded" : "bad logits");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "load_model: %s\n", e.what());
    return 1;
  }
}
