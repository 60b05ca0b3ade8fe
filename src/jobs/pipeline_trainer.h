// `dagr train --pipeline-parallel P`: the training job with the model cut into
// P stages (dagr/parallel/pipeline.h), each split over T ranks with
// --tensor-parallel T (dagr/parallel/tensor_parallel_stage.h), composed with
// data parallelism over the remaining world / (P·T) ranks.
#pragma once

#include <string>

#include "trainer.h"

namespace dagr::train {

// InputError for pipeline options no run can use (P or M below 1, an unknown
// schedule, more micro-batches than the batch, more stages than layers,
// --tensor-parallel with no stage it could split, or a feature the pipeline
// job does not have: DP-SGD, secure aggregation, elastic recovery, restarts).
void check_pipeline_options(const TrainOptions& options);

// What --print-schedule shows: the stages, each rank's action list, and the
// simulator's tick-by-tick picture with the bubble and peak in-flight figures.
std::string pipeline_schedule_text(const TrainOptions& options);

// Runs this process's rank of the pipeline job; returns the exit status.
int run_pipeline_training(const TrainOptions& options);

}  // namespace dagr::train
