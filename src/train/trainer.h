// The built-in training job behind `dagr train`: one rank's loop over epochs.
#pragma once

#include <cstdint>
#include <string>

namespace dagr::train {

struct TrainOptions {
  std::string model = "mlp";
  int hidden = 256;
  std::string dataset;       // folder of IDX files
  int epochs = 10;
  std::int64_t batch_size = 64;  // per rank
  double lr = 1e-3;
  double momentum = 0.9;     // sgd only
  std::string optimizer = "adam";
  std::string schedule = "cosine";  // learning rate: "cosine" decays to 0 over the run, "constant"
  std::uint64_t seed = 0;
  int threads = 1;           // compute threads per worker
  int tensor_parallel = 1;   // ranks that split the MLP's layers; the rest is data parallel
  std::string out = "runs/train";
  std::int64_t max_steps = 0;  // 0: whole epochs; otherwise stop after this many steps (benchmarks)
};

// Runs this process's rank of the job (Communicator::from_env); returns the exit status.
int run_training(const TrainOptions& options);

}  // namespace dagr::train
