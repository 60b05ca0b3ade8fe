#include <algorithm>
#include <cstdio>
#include <thread>

#include "commands.h"
#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "self_launch.h"
#include "train_pictures.h"
#include "jobs/pipeline_trainer.h"
#include "jobs/trainer.h"

namespace dagr::cli {

Command add_train(CLI::App& root, const std::vector<std::string>& argv) {
  auto* app = root.add_subcommand("train", "Train a model on Fashion-MNIST with several workers");
  auto o = std::make_shared<train::TrainOptions>();
  o->dataset = data::kFashionMnistDir;
  auto workers = std::make_shared<int>(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  app->add_option("--model", o->model, "mlp, cnn or deep-mlp")->check(CLI::IsMember({"mlp", "cnn", "deep-mlp"}));
  app->add_option("--hidden", o->hidden, "MLP hidden size")->check(CLI::Range(1, 1 << 20));
  app->add_option("--depth", o->depth, "deep-mlp: its hidden layers (default 8)")->check(CLI::Range(1, 4096));
  app->add_option("--dataset", o->dataset, "Folder of IDX files (train-*, t10k-*)");
  app->add_option("--workers", *workers, "Worker processes (default: one per core; ignored inside a launched job)")
      ->check(CLI::Range(1, 256));
  auto bind = std::make_shared<bool>(true);
  app->add_flag("!--no-bind", *bind,
                "Leave the workers unbound (by default each worker runs on --threads CPUs of its own where there "
                "are enough for all, as mpirun's --bind-to core)");
  app->add_option("--epochs", o->epochs, "Epochs")->check(CLI::Range(1, 100000));
  app->add_option("--batch-size", o->batch_size, "Batch size per rank")->check(CLI::Range(1, 1 << 20));
  app->add_option("--lr", o->lr, "Learning rate (finite, above 0)");
  app->add_option("--momentum", o->momentum, "SGD momentum (0 to 1)");
  app->add_option("--optimizer", o->optimizer, "sgd or adam")->check(CLI::IsMember({"sgd", "adam"}));
  app->add_option("--zero", o->zero,
                  "Shard the optimizer state over the data-parallel ranks: ZeRO stage 1, or 2 (gradients "
                  "reduce-scattered too); 0: off");
  app->add_option("--schedule", o->schedule, "Learning rate schedule: cosine or constant")
      ->check(CLI::IsMember({"cosine", "constant"}));
  app->add_option("--seed", o->seed, "Seed for initialisation and shuffling");
  app->add_option("--threads", o->threads, "Compute threads per worker")->check(CLI::Range(1, 1024));
  app->add_option("--tensor-parallel", o->tensor_parallel,
                  "Ranks that split each layer: the mlp's, or with --pipeline-parallel each stage's Linear → ReLU → "
                  "Linear runs")
      ->check(CLI::Range(1, 256));
  // Pipeline parallelism (jobs/pipeline_trainer.h): stages by layer, micro-batches, a schedule.
  app->add_option("--pipeline-parallel", o->pipeline_parallel, "Stages the model is cut into by layer (one rank each)")
      ->check(CLI::Range(1, 256));
  app->add_option("--micro-batches", o->micro_batches, "Micro-batches per batch in the pipeline")
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--schedule-pp", o->schedule_pp, "Pipeline schedule: gpipe or 1f1b")
      ->check(CLI::IsMember({"gpipe", "1f1b"}));
  app->add_option("--pipeline-balance", o->pipeline_balance,
                  "Cut the stages by parameter count or by measured forward+backward time")
      ->check(CLI::IsMember({"parameters", "time"}));
  auto print_schedule = std::make_shared<bool>(false);
  app->add_flag("--print-schedule", *print_schedule,
                "Print the pipeline's stages, action lists and simulated timeline, then exit");
  app->add_option("--out", o->out, "Output folder (model.pt, metrics.jsonl, checkpoints)");
  app->add_option("--max-steps", o->max_steps, "Stop after this many steps (0: all)")->check(CLI::NonNegativeNumber);
  app->add_option("--checkpoint-every", o->checkpoint_every,
                  "Write a training-state checkpoint to --out every this many steps (always after each epoch)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--eval-every", o->eval_every,
                  "Also measure the test accuracy every this many steps (a metrics line each; always after each epoch)")
      ->check(CLI::NonNegativeNumber);
  app->add_flag("--resume", o->resume, "Continue from the newest valid checkpoint in --out (from the start if none)");
  app->add_option("--stop-after-steps", o->stop_after_steps,
                  "Stop after this step without saving the model, as a crash would (for tests of --resume)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--max-restarts", o->max_restarts,
                  "When a worker fails, restart all workers this often; they resume from the newest checkpoint")
      ->check(CLI::Range(0, 1000));
  app->add_flag("--elastic", o->elastic,
                "When a worker fails, the others carry on without it from the last completed step (data parallel only)");
  app->add_flag("--balance-batch", o->balance_batch,
                "Split each step's global batch among the workers by their measured speed, so that a slower worker "
                "takes fewer samples instead of making the others wait (results then vary from run to run)");
  app->add_option("--min-workers", o->min_workers,
                  "With --elastic: fewer workers left than this fails the job (or restarts it, with --max-restarts)")
      ->check(CLI::Range(1, 256));
  // DP-SGD (trainer.h): per-example clipping, Gaussian noise in shares, ε printed after each epoch.
  app->add_option("--dp-clip", o->dp_clip, "DP-SGD: clip each example's gradient to this L2 norm (0: no DP-SGD)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--dp-noise", o->dp_noise,
                  "DP-SGD: noise multiplier σ (the sum of clipped gradients gets N(0, σ²·clip²), in shares over the ranks)");
  app->add_option("--dp-epsilon", o->dp_epsilon, "DP-SGD: choose σ so that the whole run spends at most this ε");
  app->add_option("--dp-delta", o->dp_delta, "DP-SGD: the δ at which ε is reported (and --dp-epsilon met)");
  app->add_option("--dp-noise-seed", o->dp_noise_seed,
                  "DP-SGD: draw the noise from this seed, for reproducible runs (default: a secret key from /dev/urandom)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--secure-aggregation", o->secure_clip,
                  "Average the gradients by secure aggregation (masked fixed point), each element clipped to ±CLIP "
                  "(0: off)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--comm-hook", o->comm_hook,
                  "How DDP averages the gradients: none (allreduce), fp16 or bf16 (16 bits on the wire), powersgd "
                  "(low-rank, error feedback)")
      ->check(CLI::IsMember({"none", "fp16", "bf16", "powersgd"}));
  app->add_option("--powersgd-rank", o->powersgd_rank, "PowerSGD: rank of each gradient matrix's approximation")
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--powersgd-start-iter", o->powersgd_start_iter,
                  "PowerSGD: steps of plain allreduce before compression starts")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--powersgd-uncompressed", o->powersgd_uncompressed,
                  "PowerSGD: how it averages what it does not compress (the steps before --powersgd-start-iter, "
                  "buckets without a matrix worth compressing): none (allreduce), fp16 or bf16")
      ->check(CLI::IsMember({"none", "fp16", "bf16"}));
  app->add_option("--bucket-cap-mb", o->bucket_cap_mb,
                  "DDP's gradient buckets hold this many MiB (the first one at most 1 MiB), as PyTorch's bucket_cap_mb");
  app->add_option("--timeline", o->timeline,
                  "Write a timeline of the run (forward, backward, optimizer step, each bucket's communication, "
                  "waits; every rank) to this Chrome-trace JSON file");
  // Parameter server (src/jobs/ps_trainer.h): ranks 0..S-1 serve, the other --workers compute gradients.
  app->add_option("--mode", o->mode, "ddp (every worker holds the model) or ps (a parameter server)")
      ->check(CLI::IsMember({"ddp", "ps"}));
  app->add_option("--servers", o->servers, "With --mode ps: this many of the --workers hold the parameters")
      ->check(CLI::Range(1, 255));
  app->add_flag("--async", o->ps_async, "With --mode ps: apply each push as it comes (needs --staleness)");
  app->add_option("--staleness", o->staleness,
                  "With --mode ps --async: no worker computes on parameters more than this many updates old")
      ->check(CLI::Range(0, 1 << 20));
  // Pictures (train_pictures.h): rank 0 draws OUT/curves.png, and writes TensorBoard events, after training.
  auto tensorboard = std::make_shared<std::string>();
  app->add_option("--tensorboard", *tensorboard, "Also write the curves as TensorBoard scalar events to this folder");
  o->on_finished = [out = &o->out, tensorboard] { write_training_pictures(*out, *tensorboard); };
  return {app, [o, workers, bind, argv, tensorboard, print_schedule] {
            if (*print_schedule) {
              std::fputs(train::pipeline_schedule_text(*o).c_str(), stdout);
              return 0;
            }
            train::check_options(*o);  // bad options: one line and exit 2 before any worker starts
            const int split = o->pipeline_parallel * o->tensor_parallel;  // ranks that share each batch
            const std::string pp = detail::concat("--pipeline-parallel ", o->pipeline_parallel),
                              tp = detail::concat("--tensor-parallel ", o->tensor_parallel);
            DAGR_ENFORCE(o->mode == "ps" || !job_launcher().empty() || *workers % split == 0, InputError,
                         o->tensor_parallel == 1 ? pp : o->pipeline_parallel == 1 ? tp : pp + " × " + tp,
                         " does not divide the ", *workers, " workers");
            if (!tensorboard->empty()) check_tensorboard_dir(*tensorboard);
            LaunchOptions recovery;
            recovery.max_restarts = o->max_restarts;
            recovery.standby = o->max_restarts > 0;  // run_training waits for its rank after loading the data
            recovery.elastic = o->elastic;
            DAGR_ENFORCE(!o->elastic || !job_launcher().empty() || o->min_workers <= *workers, InputError,
                         "--min-workers ", o->min_workers, " is more than the ", *workers, " workers");
            recovery.min_workers = std::min(o->min_workers, *workers);
            recovery.cores_per_worker = *bind ? o->threads : 0;
            if (o->mode == "ps" && job_launcher().empty()) {
              DAGR_ENFORCE(o->servers < *workers, InputError, "--servers ", o->servers, " must be below --workers ",
                           *workers, " (the servers are some of the workers)");
              // Asynchronous: a lost worker does not stop the others (the servers drop it).
              recovery.elastic = o->ps_async;
              recovery.min_workers = o->servers + 1;
            }
            if (auto status = run_as_workers(*workers, argv, recovery)) return *status;
            return train::run_training(*o);
          }};
}

}  // namespace dagr::cli
