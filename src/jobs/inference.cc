// One rank of `dagr infer`: load the dense checkpoint, keep this rank's shards,
// and answer the test set batch by batch. Data group d takes batches d, d+D, …;
// the ranks of a tensor group compute each of their batches together.
#include "inference.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/train/compute_threads.h"
#include "network.h"

namespace dagr::train {

int run_inference(const InferOptions& o) {
  DAGR_ENFORCE(o.batch_size >= 1, InputError, "--batch-size must be at least 1");
  set_compute_threads(o.threads);
  Communicator world = Communicator::from_env();
  const ParallelGroups groups = make_parallel_groups(world, o.tensor_parallel);
  Network net = load_network(o.model, o.checkpoint, groups);
  net.module->eval();
  const data::ImageSet test = data::load_image_set(o.dataset, "t10k");
  torch::NoGradGuard no_grad;

  using Clock = std::chrono::steady_clock;
  const std::int64_t n = test.images.size(0);
  const std::int64_t batches = (n + o.batch_size - 1) / o.batch_size;
  std::vector<double> latencies_ms;
  std::int64_t counts[2] = {0, 0};
  world.barrier();
  const auto start = Clock::now();
  for (std::int64_t k = groups.data.rank(); k < batches; k += groups.data.size()) {
    const std::int64_t begin = k * o.batch_size, len = std::min(o.batch_size, n - begin);
    const auto t0 = Clock::now();
    const auto predicted = net.forward(test.images.narrow(0, begin, len)).argmax(1);
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (groups.tensor.rank() == 0) {
      counts[0] += predicted.eq(test.labels.narrow(0, begin, len)).sum().item<std::int64_t>();
      counts[1] += len;
    }
  }
  world.barrier();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  world.allreduce(std::span<std::int64_t>(counts, 2));
  if (world.rank() == 0) {
    std::sort(latencies_ms.begin(), latencies_ms.end());
    const auto at = [&](double q) { return latencies_ms[static_cast<std::size_t>(q * (latencies_ms.size() - 1))]; };
    std::printf("dagr infer: %s from %s on %d workers (tensor-parallel %d × data-parallel %d)\n", o.model.c_str(),
                o.checkpoint.c_str(), world.size(), groups.tensor.size(), groups.data.size());
    std::printf("accuracy %.4f (%lld of %lld test images)\n", static_cast<double>(counts[0]) / counts[1],
                static_cast<long long>(counts[0]), static_cast<long long>(counts[1]));
    std::printf("throughput %.0f images/s; latency per batch of %lld: median %.3f ms, p90 %.3f ms\n", counts[1] / seconds,
                static_cast<long long>(o.batch_size), at(0.5), at(0.9));
  }
  return 0;
}

}  // namespace dagr::train
