// Tensor × data parallel training steps on MPI (run under `mpirun -np 4`: 2 × 2).
//
// The MLP's first layer is a ColumnParallelLinear whose input requires grad, so
// every backward allreduces the input gradient over the tensor group on the
// thread that runs backward, while DDP reduces its buckets over the data group
// on that group's background thread: two communicators in use at once from two
// threads of each rank. Afterwards the data-parallel replicas must hold equal
// weights and the tensor ranks equal input gradients. Exit 0 when they do.
#include <cstdio>

#include "dagr/parallel/groups.h"
#include "dagr/parallel/tensor_parallel.h"
#include "dagr/train/ddp.h"

using namespace dagr;

namespace {

// True when `t` is the same on every rank of `group` (max == min elementwise).
bool same_across(const torch::Tensor& t, Communicator& group) {
  auto hi = t.detach().to(torch::kFloat32).contiguous().clone(), lo = hi.clone();
  group.allreduce(std::span<float>(hi.data_ptr<float>(), static_cast<std::size_t>(hi.numel())), ReduceOp::max);
  group.allreduce(std::span<float>(lo.data_ptr<float>(), static_cast<std::size_t>(lo.numel())), ReduceOp::min);
  return torch::equal(hi, lo);
}

}  // namespace

int main() {
  try {
    at::set_num_threads(1);
    Communicator world = Communicator::from_env();
    if (world.size() != 4 || world.backend_name() != "mpi") {
      std::fprintf(stderr, "tp_mpi_worker: run under mpirun -np 4 (got %d ranks on %s)\n", world.size(),
                   world.backend_name().c_str());
      return 2;
    }
    ParallelGroups groups = make_parallel_groups(world, 2);
    torch::manual_seed(11);
    TensorParallelMlp mlp(64, groups.tensor);
    // Small buckets: several per step, the first started while backward is still running.
    DistributedDataParallel ddp(mlp.ptr(), groups.data, {.bucket_cap_bytes = 16 << 10, .first_bucket_bytes = 4 << 10});
    torch::optim::SGD sgd(mlp->parameters(), 0.01);
    const int data_rank = groups.data.rank();
    torch::Tensor x;
    constexpr int kSteps = 150;
    for (int step = 0; step < kSteps; ++step) {
      torch::manual_seed(1000 * data_rank + step);  // the tensor ranks of one group share a batch
      x = torch::randn({8, 1, 28, 28}, torch::requires_grad());
      sgd.zero_grad();
      mlp->forward(x).pow(2).mean().backward();
      sgd.step();
    }
    bool ok = same_across(x.grad(), groups.tensor);
    for (const auto& p : mlp->parameters()) ok = same_across(p, groups.data) && ok;
    std::printf("rank %d: tensor x data parallel over MPI %s\n", world.rank(),
                ok ? "consistent" : "INCONSISTENT");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_mpi_worker: %s\n", e.what());
    return 1;
  }
}
