// Tensor-parallel layers as real processes (run under `dagr launch -n T`):
// every rank builds the same dense layer from one seed, runs the sharded layer,
// and checks output and gradients against the dense ones. Exit 0 when they agree.
#include <cstdio>

#include "dagr/parallel/tensor_parallel.h"

using namespace dagr;

int main() {
  at::set_num_threads(1);
  Communicator comm = Communicator::from_env();
  const std::int64_t in = 29, out = 17;  // divisible by no group size above 1
  torch::manual_seed(5);
  torch::nn::Linear a(in, out), b(out, in);
  auto x = torch::randn({6, in}, torch::requires_grad());
  auto y = b->forward(torch::relu(a->forward(x)));
  (y * y).sum().backward();

  ColumnParallelLinear col(in, out, comm, /*gather_output=*/false);
  RowParallelLinear row(out, in, comm, /*input_is_parallel=*/true);
  col->load_dense(a->weight.detach(), a->bias.detach());
  row->load_dense(b->weight.detach(), b->bias.detach());
  auto xs = x.detach().clone().requires_grad_(true);
  auto ys = row->forward(torch::relu(col->forward(xs)));
  (ys * ys).sum().backward();

  const auto close = [](const torch::Tensor& p, const torch::Tensor& q) { return torch::allclose(p, q, 1e-4, 1e-5); };
  const Shard s = shard_of(out, comm.size(), comm.rank());
  const bool ok = close(ys, y) && close(xs.grad(), x.grad()) &&
                  close(col->weight.grad(), a->weight.grad().narrow(0, s.begin, s.length)) &&
                  close(row->weight.grad(), b->weight.grad().narrow(1, s.begin, s.length)) &&
                  close(row->bias.grad(), b->bias.grad());
  std::printf("rank %d of %d: tensor-parallel %s dense\n", comm.rank(), comm.size(), ok ? "matches" : "DIFFERS FROM");
  return ok ? 0 : 1;
}
