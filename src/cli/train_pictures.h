// What `dagr train` draws once training is done, from OUT/metrics.jsonl (one
// JSON line per epoch, written by rank 0; see src/jobs/trainer.cc):
//   OUT/curves.png   loss per epoch (global, and each rank's own) and accuracy
//                    per epoch (train and test)
//   --tensorboard D  the same figures as TensorBoard scalars (train/loss,
//                    train/accuracy, test/accuracy, rank<r>/loss), step = epoch
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dagr::cli {

struct EpochMetrics {
  std::int64_t epoch = 0;
  double seconds = 0;  // since training started
  double train_loss = 0, train_accuracy = 0, test_accuracy = 0;
  std::vector<double> rank_loss;  // each rank's mean loss over its own samples
};

// The epoch lines of a metrics.jsonl (the summary line skipped); InputError if unreadable.
std::vector<EpochMetrics> read_metrics(const std::string& path);

void draw_training_curves(const std::vector<EpochMetrics>& epochs, const std::string& png);

// Returns the event file's path.
std::string write_training_events(const std::vector<EpochMetrics>& epochs, const std::string& dir);

// Before training: creates the --tensorboard folder, InputError if it cannot.
void check_tensorboard_dir(const std::string& dir);

// After training, from OUT/metrics.jsonl: OUT/curves.png (a failure to draw is
// one warning line: the model is saved all the same) and, when `tensorboard`
// is not empty, the event file there. Says on stdout where they are.
void write_training_pictures(const std::string& out, const std::string& tensorboard);

}  // namespace dagr::cli
