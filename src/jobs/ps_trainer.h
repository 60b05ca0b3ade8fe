// `dagr train --mode ps`: the built-in training job on a parameter server
// (dagr/train/parameter_server.h). World ranks 0..S-1 serve, the others work.
#pragma once

#include "dagr/comm/communicator.h"
#include "dagr/data/fashion_mnist.h"
#include "trainer.h"

namespace dagr::train {

// InputError naming the flag for --mode/--servers/--async/--staleness
// combinations no run can use, and for flags --mode ps does not take.
void check_ps_options(const TrainOptions& options);

// One rank of a --mode ps job; returns the exit status.
int run_ps_training(const TrainOptions& options, Communicator& world, const data::ImageSet& train,
                    const data::ImageSet& test);

}  // namespace dagr::train
