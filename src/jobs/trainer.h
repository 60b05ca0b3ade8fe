// The built-in training job behind `dagr train`: one rank's loop over epochs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace dagr::train {

struct TrainOptions {
  std::string model = "mlp";
  int hidden = 256;
  int depth = 8;             // deep-mlp only: its hidden layers (models::kDefaultDepth, make_model)
  std::string dataset;       // folder of IDX files
  int epochs = 10;
  std::int64_t batch_size = 64;  // per rank
  double lr = 1e-3;
  double momentum = 0.9;     // sgd only
  std::string optimizer = "adam";
  std::string schedule = "cosine";  // learning rate: "cosine" decays to 0 over the run, "constant"
  std::uint64_t seed = 0;
  int threads = 1;           // compute threads per worker
  int tensor_parallel = 1;   // ranks that split the MLP's (or each stage's) layers; the rest is data parallel
  // pipeline_parallel > 1: the model cut by layer into that many stages, each batch in
  // micro_batches micro-batches, run by schedule_pp (gpipe, 1f1b); the stages are cut by
  // parameter count or by measured time (pipeline_balance). See pipeline_trainer.h.
  int pipeline_parallel = 1;
  int micro_batches = 1;
  std::string schedule_pp = "1f1b";
  std::string pipeline_balance = "parameters";
  std::string out = "runs/train";
  std::int64_t max_steps = 0;  // 0: whole epochs; otherwise stop after this many steps (benchmarks)
  std::int64_t checkpoint_every = 0;  // steps between training-state checkpoints in `out` (0: only after each epoch)
  std::int64_t eval_every = 0;        // steps between test-set evaluations within an epoch (0: only after each epoch)
  bool resume = false;       // continue from the newest checkpoint in `out` (from the start when there is none)
  std::int64_t stop_after_steps = 0;  // tests: stop after this step (counted from the run's start), as a crash would
  int max_restarts = 0;      // the launcher restarts the group this often; a restarted run resumes
  bool elastic = false;      // after losing a rank, the others shrink their group and carry on
  int min_workers = 1;       // elastic: fewer left than this is a failure (then a restart, if allowed)
  // --mode ps (src/jobs/ps_trainer.h): `servers` ranks hold the parameters and the optimizer state, the
  // others compute gradients; with ps_async each push is applied as it comes, no worker more than
  // `staleness` updates behind.
  std::string mode = "ddp";  // "ddp" or "ps"
  int servers = 0;           // 0: not given
  bool ps_async = false;
  int staleness = -1;        // -1: not given
  // DP-SGD (dagr/train/dp_sgd.h) when dp_clip > 0: each example's gradient clipped to norm dp_clip,
  // Gaussian noise of standard deviation dp_noise·dp_clip on the global sum (each data-parallel rank
  // adds its share); with dp_epsilon > 0 the noise multiplier is chosen so that the whole run spends
  // at most that ε at dp_delta. The accountant prints ε after each epoch.
  double dp_clip = 0;
  double dp_noise = -1;      // σ; -1: not given
  double dp_epsilon = 0;     // target ε instead of dp_noise; 0: not given
  double dp_delta = 1e-5;
  // 1 or 2: the optimizer sharded over the data-parallel ranks, ZeRO stage 1 or 2 (dagr/train/zero_optimizer.h); 0: not.
  int zero = 0;
  std::int64_t dp_noise_seed = -1;  // ≥ 0: noise drawn from this seed (reproducible runs); -1: from /dev/urandom
  // > 0: DDP averages the gradients by secure aggregation (dagr/comm/secure_aggregation.h), each
  // element clipped to ±secure_clip: no rank, nor a reader of /dev/shm, sees another's gradients.
  double secure_clip = 0;
  // How DDP averages each gradient bucket (dagr/train/comm_hook.h): "none" (one allreduce), "fp16", "bf16"
  // or "powersgd" (rank powersgd_rank; for the first powersgd_start_iter steps, as PyTorch's, and for buckets with
  // nothing to compress, the hook powersgd_uncompressed names: "none" for plain allreduce).
  std::string comm_hook = "none";
  int powersgd_rank = 1;
  std::int64_t powersgd_start_iter = 1000;
  std::string powersgd_uncompressed = "none";  // how PowerSGD averages what it does not compress: "none", "fp16", "bf16"
  double bucket_cap_mb = 25;  // DDP's bucket size in MiB (the first bucket: at most 1 MiB), as PyTorch's bucket_cap_mb
  // Split each step's global batch among the data-parallel ranks by their measured speed
  // (dagr/train/batch_balancer.h) instead of equally: a slower rank takes fewer samples.
  bool balance_batch = false;
  std::string timeline;       // non-empty: write a Chrome-trace timeline of the run here (dagr/train/timeline.h)
  std::function<void()> on_finished;  // run by rank 0 once metrics.jsonl is complete (dagr train draws its curves)
};

// InputError naming the flag for options no run can use (a learning rate that
// is not a finite positive number, an --out that is not a writable folder, …);
// creates --out. `dagr train` calls it before starting its workers.
void check_options(const TrainOptions& options);

// Runs this process's rank of the job (Communicator::from_env); returns the exit status.
int run_training(const TrainOptions& options);

}  // namespace dagr::train
