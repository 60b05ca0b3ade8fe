// Compares two models saved by `dagr train`, tensor by tensor:
//   compare_models mlp|cnn|deep-mlp A.pt B.pt TOLERANCE
// prints the largest absolute difference of any parameter or buffer; exit 0
// when it is at most TOLERANCE (0: the tensors must be bitwise equal), 1 when
// not, 2 when a file does not load.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dagr/models/models.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: compare_models mlp|cnn|deep-mlp A.pt B.pt TOLERANCE\n");
    return 2;
  }
  const double tolerance = std::atof(argv[4]);
  torch::nn::Sequential a, b;
  try {
    a = dagr::models::make_model(argv[1]);
    b = dagr::models::make_model(argv[1]);
    torch::load(a, argv[2]);
    torch::load(b, argv[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_models: %s\n", e.what());
    return 2;
  }
  const auto ta = a->named_parameters(), tb = b->named_parameters();
  double largest = 0;
  bool bitwise = true;
  for (const auto& item : ta) {
    const torch::Tensor& x = item.value();
    const torch::Tensor& y = tb[item.key()];
    if (x.sizes() != y.sizes()) {
      std::printf("%s: shapes differ\n", item.key().c_str());
      return 1;
    }
    largest = std::max(largest, (x - y).abs().max().item<double>());
    bitwise = bitwise && std::memcmp(x.contiguous().data_ptr(), y.contiguous().data_ptr(), x.nbytes()) == 0;
  }
  std::printf("largest difference %.3g%s\n", largest, bitwise ? " (bitwise equal)" : "");
  return (tolerance == 0 ? bitwise : largest <= tolerance) ? 0 : 1;
}
