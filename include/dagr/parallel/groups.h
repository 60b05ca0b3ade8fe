// Tensor-parallel × data-parallel groups from one world (e.g. 4 ranks = 2 × 2).
//
// World rank r is tensor rank r mod T in tensor group r / T: consecutive ranks
// share a batch and split the layers; ranks with the same tensor rank hold the
// same shards and split the data (DDP reduces over `data` only).
#pragma once

#include "dagr/comm/communicator.h"

namespace dagr {

struct ParallelGroups {
  Communicator tensor;  // size T
  Communicator data;    // size world / T
};

// Collective over `world`. InputError when T does not divide the world size.
ParallelGroups make_parallel_groups(Communicator& world, int tensor_parallel);

}  // namespace dagr
