// `dagr infer`: a checkpoint of `dagr train`, sharded over the ranks, run on the test set.
#pragma once

#include <cstdint>
#include <string>

namespace dagr::train {

struct InferOptions {
  std::string checkpoint;
  std::string model = "mlp";
  std::string dataset;
  int tensor_parallel = 1;
  std::int64_t batch_size = 256;
  int threads = 1;
};

// Runs this process's rank; rank 0 prints accuracy, throughput and latency. Returns the exit status.
int run_inference(const InferOptions& options);

}  // namespace dagr::train
