// DistributedDataParallel, with ranks as threads: N ranks with batch b hold,
// after K steps, the parameters one process gets with batch N·b on the same
// samples in the same order; all ranks hold the same bits; unused parameters;
// rank 0's buffers on every rank after construction.
#include <gtest/gtest.h>

#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/train/ddp.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

struct Case {
  std::string model;
  int world;
  double momentum;
  int micro_batches;  // > 1: gradient accumulation, all but the last under no_sync
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " world=" << c.world << " momentum=" << c.momentum << " micro_batches=" << c.micro_batches;
}

constexpr int kSteps = 4, kBatch = 3;

torch::nn::Sequential make(const std::string& name) { return models::make_model(name, 32); }

void copy_parameters(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto src = from.parameters();
  auto dst = to.parameters();
  for (std::size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
}

// The samples of every step and micro-batch, made before any thread starts
// (torch's generator is global): N·b per batch; rank r takes rows [r·b, (r+1)·b).
struct Samples {
  std::vector<std::vector<torch::Tensor>> x, y;  // [step][micro]
  Samples(const Case& c) {
    torch::manual_seed(1234);
    for (int s = 0; s < kSteps; ++s) {
      x.emplace_back();
      y.emplace_back();
      for (int m = 0; m < c.micro_batches; ++m) {
        x.back().push_back(torch::randn({c.world * kBatch, 1, 28, 28}));
        y.back().push_back(torch::randint(0, 10, {c.world * kBatch}, torch::kInt64));
      }
    }
  }
};

// One training step over the micro-batches; all but the last backward run inside no_sync.
template <class NoSync>
void train_step(torch::nn::Sequential& model, torch::optim::SGD& opt, const Samples& data, int step, const Case& c,
                int rank, int rows, const NoSync& no_sync) {
  opt.zero_grad();
  for (int m = 0; m < c.micro_batches; ++m) {
    auto x = data.x[step][m].narrow(0, rank * kBatch, rows);
    auto y = data.y[step][m].narrow(0, rank * kBatch, rows);
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    if (m + 1 < c.micro_batches) no_sync([&] { loss.backward(); });
    else loss.backward();
  }
  opt.step();
}

void check_equivalence(const Case& c) {
  SCOPED_TRACE(::testing::Message() << c.model << " world " << c.world << " momentum " << c.momentum
                                    << " micro-batches " << c.micro_batches);
  const Samples data(c);
  torch::manual_seed(0);
  auto reference = make(c.model);
  auto initial = make(c.model);
  copy_parameters(*reference, *initial);
  // One process, batch N·b.
  {
    torch::optim::SGD opt(reference->parameters(), torch::optim::SGDOptions(0.1).momentum(c.momentum));
    for (int s = 0; s < kSteps; ++s)
      train_step(reference, opt, data, s, c, 0, c.world * kBatch, [](auto f) { f(); });
  }
  std::mutex mutex;
  std::vector<std::vector<torch::Tensor>> results(c.world);
  std::mutex construct;  // torch's generator is global: build the models one at a time
  run_ranks(c.world, [&](Communicator& comm) {
    torch::nn::Sequential model{nullptr};
    {
      std::lock_guard lock(construct);
      model = make(c.model);
    }
    if (comm.rank() == 0) copy_parameters(*initial, *model);  // the others get it from DDP's broadcast
    DistributedDataParallel ddp(model.ptr(), comm, {.bucket_cap_bytes = 16384, .first_bucket_bytes = 4096});
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(c.momentum));
    for (int s = 0; s < kSteps; ++s)
      train_step(model, opt, data, s, c, comm.rank(), kBatch, [&](auto f) {
        auto guard = ddp.no_sync();
        f();
      });
    std::lock_guard lock(mutex);
    for (auto& p : model->parameters()) results[comm.rank()].push_back(p.detach().clone());
  });
  auto expected = reference->parameters();
  for (int r = 0; r < c.world; ++r)
    for (std::size_t i = 0; i < expected.size(); ++i) {
      EXPECT_TRUE(torch::allclose(results[r][i], expected[i], 1e-4, 1e-5)) << "rank " << r << " parameter " << i
          << " max diff " << (results[r][i] - expected[i]).abs().max().item<float>();
      EXPECT_TRUE(torch::equal(results[r][i], results[0][i])) << "rank " << r << " differs from rank 0 in bits";
    }
}

class Equivalence : public ::testing::TestWithParam<Case> {};
TEST_P(Equivalence, SameParametersAsOneProcessWithTheWholeBatch) { check_equivalence(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    Ddp, Equivalence,
    ::testing::Values(Case{"mlp", 2, 0.0, 1}, Case{"mlp", 3, 0.0, 1}, Case{"mlp", 2, 0.9, 1}, Case{"mlp", 3, 0.9, 1},
                      Case{"cnn", 2, 0.0, 1}, Case{"cnn", 3, 0.9, 1}, Case{"mlp", 2, 0.9, 2}, Case{"mlp", 3, 0.0, 3},
                      Case{"cnn", 2, 0.9, 2}));

TEST(Ddp, SplitsIntoSeveralBucketsAndOverlapsThem) {
  run_ranks(2, [](Communicator& comm) {
    auto model = make("cnn");
    DistributedDataParallel ddp(model.ptr(), comm, {.bucket_cap_bytes = 65536, .first_bucket_bytes = 1024});
    EXPECT_GT(ddp.bucket_count(), 2);
    auto loss = model->forward(torch::randn({2, 1, 28, 28})).sum();
    loss.backward();
    EXPECT_GT(ddp.stats().buckets_overlapped, 0);
    EXPECT_EQ(ddp.stats().steps, 1);
  });
}

// A model with buffers: BatchNorm's running statistics (float32) and step
// count (int64), and a float64 buffer of its own.
struct WithBuffers : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  torch::Tensor scale;
  WithBuffers() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    bn = register_module("bn", torch::nn::BatchNorm1d(3));
    scale = register_buffer("scale", torch::ones({5}, torch::kFloat64));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn->forward(fc->forward(x)) * scale[0]; }
};

// Every buffer holds different values on every rank before DDP; after its
// construction every rank holds rank 0's.
TEST(Ddp, EveryRankHoldsRankZerosBuffersAfterConstruction) {
  std::mutex construct;  // torch's generator is global: build the models one at a time
  run_ranks(3, [&](Communicator& comm) {
    std::shared_ptr<WithBuffers> model;
    {
      std::lock_guard lock(construct);
      model = std::make_shared<WithBuffers>();
    }
    auto buffers = model->named_buffers();
    ASSERT_EQ(buffers.size(), 4u);  // running_mean, running_var, num_batches_tracked, scale
    {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < buffers.size(); ++i) buffers[i].value().fill_(static_cast<double>(10 * (comm.rank() + 1) + i));
    }
    DistributedDataParallel ddp(model, comm);
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const auto& b = buffers[i].value();
      EXPECT_TRUE(torch::equal(b, torch::full_like(b, static_cast<double>(10 + i))))
          << buffers[i].key() << " on rank " << comm.rank() << ": " << b;
    }
  });
}

// A model with a branch it does not use.
struct Branchy : torch::nn::Module {
  torch::nn::Linear used{nullptr}, unused{nullptr};
  Branchy() {
    used = register_module("used", torch::nn::Linear(4, 2));
    unused = register_module("unused", torch::nn::Linear(4, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return used->forward(x); }
};

TEST(Ddp, UnusedParametersWithTheOption) {
  run_ranks(2, [](Communicator& comm) {
    auto model = std::make_shared<Branchy>();
    DistributedDataParallel ddp(model, comm, {.find_unused_parameters = true});
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1));
    for (int i = 0; i < 3; ++i) {
      opt.zero_grad();
      model->forward(torch::full({2, 4}, comm.rank() + 1.0)).sum().backward();
      opt.step();
    }
    EXPECT_EQ(model->unused->weight.grad().abs().sum().item<float>(), 0.0f);
    EXPECT_GT(model->used->weight.grad().abs().sum().item<float>(), 0.0f);
  });
}

TEST(Ddp, UnusedParametersWithoutTheOptionAreAClearError) {
  run_ranks(2, [](Communicator& comm) {
    auto model = std::make_shared<Branchy>();
    DistributedDataParallel ddp(model, comm);
    try {
      model->forward(torch::ones({2, 4})).sum().backward();
      ADD_FAILURE() << "no error";
    } catch (const std::exception& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("unused.weight"), std::string::npos) << m;
      EXPECT_NE(m.find("find_unused_parameters"), std::string::npos) << m;
    }
  });
}

}  // namespace
}  // namespace dagr
