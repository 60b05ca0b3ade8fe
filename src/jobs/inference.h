// `dagr infer`: a checkpoint of `dagr train`, sharded over the ranks, run on the test set.
#pragma once

#include <cstdint>
#include <string>

namespace dagr::train {

struct InferOptions {
  std::string checkpoint;
  std::string model = "mlp";
  int depth = 8;  // deep-mlp only: the checkpoint's hidden layers (models::kDefaultDepth)
  std::string dataset;
  int tensor_parallel = 1;
  // > 1: the model cut by layer into this many stages (by parameter count, as
  // dagr train cuts it), one per rank; each batch flows through them.
  int pipeline_parallel = 1;
  std::int64_t batch_size = 256;
  int threads = 1;
};

// InputError for options no run can use: --depth for a model other than the
// deep-mlp, --pipeline-parallel below 1, above the model's layers, or beside --tensor-parallel above 1 when the
// checkpoint's stages hold no run to split (or one too narrow; this reads the
// checkpoint). `dagr infer` calls it before starting its workers.
void check_inference_options(const InferOptions& options);

// Runs this process's rank; rank 0 prints accuracy, throughput and latency. Returns the exit status.
int run_inference(const InferOptions& options);

}  // namespace dagr::train
