#include "dagr/torch/shared_tensor.h"

#include "dagr/comm/shared_buffer.h"
#include "dagr/error.h"

namespace dagr {

torch::Tensor shared_zeros(Communicator& comm, std::int64_t numel, torch::ScalarType type) {
  DAGR_ENFORCE(numel >= 0, InputError, "shared_zeros: numel must not be negative, not ", numel);
  const SharedBuffer buffer = comm.allocate_shared(static_cast<std::size_t>(numel) * c10::elementSize(type));
  // The storage's deleter holds the allocation: it goes with the last tensor that uses it.
  return torch::from_blob(
      buffer.data(), {numel}, [owner = buffer.owner()](void*) mutable { owner.reset(); },
      torch::TensorOptions().dtype(type));
}

}  // namespace dagr
