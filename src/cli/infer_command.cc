#include <algorithm>
#include <thread>

#include "commands.h"
#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "self_launch.h"
#include "jobs/inference.h"

namespace dagr::cli {

Command add_infer(CLI::App& root, const std::vector<std::string>& argv) {
  auto* app = root.add_subcommand("infer", "Run a trained checkpoint on the test set, sharded over workers");
  auto o = std::make_shared<train::InferOptions>();
  o->dataset = data::kFashionMnistDir;
  auto workers = std::make_shared<int>(1);
  app->add_option("--checkpoint", o->checkpoint, "model.pt written by dagr train")->required();
  app->add_option("--model", o->model, "mlp, cnn or deep-mlp (what the checkpoint holds)")
      ->check(CLI::IsMember({"mlp", "cnn", "deep-mlp"}));
  app->add_option("--depth", o->depth, "deep-mlp: its hidden layers, as trained (default 8)")
      ->check(CLI::Range(1, 4096));
  app->add_option("--workers", *workers, "Worker processes (ignored inside a launched job)")
      ->check(CLI::Range(1, 256));
  app->add_option("--tensor-parallel", o->tensor_parallel,
                  "Ranks that split each layer: the mlp's, or with --pipeline-parallel each stage's Linear → ReLU → "
                  "Linear runs")
      ->check(CLI::Range(1, 256));
  app->add_option("--pipeline-parallel", o->pipeline_parallel,
                  "Stages the model is cut into by layer (one rank each); each batch flows through them");
  app->add_option("--dataset", o->dataset, "Folder of IDX files (t10k-*)");
  app->add_option("--batch-size", o->batch_size, "Images per batch")->check(CLI::Range(1, 1 << 20));
  app->add_option("--threads", o->threads, "Compute threads per worker")->check(CLI::Range(1, 1024));
  return {app, [o, workers, argv] {
            train::check_inference_options(*o);  // bad options: one line and exit 2 before any worker starts
            DAGR_ENFORCE(!job_launcher().empty() || *workers % (o->pipeline_parallel * o->tensor_parallel) == 0,
                         InputError, "--pipeline-parallel ", o->pipeline_parallel, " × --tensor-parallel ",
                         o->tensor_parallel, " does not divide the ", *workers, " workers");
            if (auto status = run_as_workers(*workers, argv)) return *status;
            return train::run_inference(*o);
          }};
}

}  // namespace dagr::cli
