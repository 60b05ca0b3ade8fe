// A torch::Tensor in memory a communicator's group shares, so that in-place
// allreduces of it take no staging copies (dagr/comm/shared_buffer.h).
//
//   torch::Tensor grads = dagr::shared_zeros(comm, n, torch::kFloat32);  // collective
//   dagr::allreduce(comm, grads);   // on shared memory: summed in place, each rank
//                                   // writing its piece straight into every rank's tensor
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "dagr/comm/communicator.h"

namespace dagr {

// A zeroed 1-D tensor of `numel` elements of `type` on the CPU, in
// comm.allocate_shared memory (ordinary memory over MPI or in a group of one);
// the memory lives as long as the tensor's storage. Collective: every rank
// asks for the same numel and type.
torch::Tensor shared_zeros(Communicator& comm, std::int64_t numel, torch::ScalarType type);

}  // namespace dagr
