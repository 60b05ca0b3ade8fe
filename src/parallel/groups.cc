#include "dagr/parallel/groups.h"

#include "dagr/error.h"

namespace dagr {

ParallelGroups make_parallel_groups(Communicator& world, int t) {
  DAGR_ENFORCE(t >= 1 && world.size() % t == 0, InputError, "--tensor-parallel ", t, " does not divide the ",
               world.size(), " workers");
  const int tensor_rank = world.rank() % t, data_rank = world.rank() / t;
  auto tensor = world.split(data_rank, tensor_rank);
  auto data = world.split(tensor_rank, data_rank);
  return {*tensor, *data};
}

}  // namespace dagr
