// DistributedDataParallel, with ranks as threads: N ranks with batch b hold,
// after K steps, the parameters one process gets with batch N·b on the same
// samples in the same order; all ranks hold the same bits; unused parameters;
// rank 0's buffers on every rank after construction and (broadcast_buffers)
// after each step; float64/float16/bfloat16 parameters averaged; buckets
// rebuilt in the order gradients come; join() for uneven inputs.
#include <gtest/gtest.h>

#include <cstring>

#include <algorithm>
#include <mutex>

#include "dagr/error.h"
#include "dagr/models/models.h"
#include "dagr/train/batch_balancer.h"
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

// The model every rank starts from, and what one process makes of it with the
// whole batch of N·b samples in kSteps steps.
struct Reference {
  torch::nn::Sequential initial{nullptr}, trained{nullptr};
};
Reference one_process(const Case& c, const Samples& data) {
  torch::manual_seed(0);
  Reference r{make(c.model), make(c.model)};
  copy_parameters(*r.initial, *r.trained);
  torch::optim::SGD opt(r.trained->parameters(), torch::optim::SGDOptions(0.1).momentum(c.momentum));
  for (int s = 0; s < kSteps; ++s) train_step(r.trained, opt, data, s, c, 0, c.world * kBatch, [](auto f) { f(); });
  return r;
}

void check_equivalence(const Case& c) {
  SCOPED_TRACE(::testing::Message() << c.model << " world " << c.world << " momentum " << c.momentum
                                    << " micro-batches " << c.micro_batches);
  const Samples data(c);
  auto [initial, reference] = one_process(c, data);
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

// dagr train --balance-batch: the step's samples cut unequally by a
// BatchBalancer (here 5, 3 and 1 of 9), each rank's mean loss weighted by its
// BatchBalancer::loss_weight, train the same model as one process on the whole
// batch; unweighted, the average of the three means would not be the mean.
TEST(Ddp, UnequalSlicesWeightedByTheirShareTrainAsOneProcessWithTheWholeBatch) {
  const Case c{"mlp", 3, 0.9, 1};
  const Samples data(c);
  BatchBalancer balancer(c.world);
  const std::int64_t window = c.world * kBatch;
  balancer.adopt(std::vector<double>{5.1 / 9, 2.9 / 9, 1.0 / 9, 20});
  ASSERT_EQ(balancer.slice(0, window).count, 5);
  ASSERT_EQ(balancer.slice(1, window).count, 3);
  ASSERT_EQ(balancer.slice(2, window).count, 1);
  auto [initial, reference] = one_process(c, data);
  std::mutex mutex, construct;
  std::vector<std::vector<torch::Tensor>> results(c.world);
  run_ranks(c.world, [&](Communicator& comm) {
    torch::nn::Sequential model{nullptr};
    {
      std::lock_guard lock(construct);
      model = make(c.model);
    }
    if (comm.rank() == 0) copy_parameters(*initial, *model);
    DistributedDataParallel ddp(model.ptr(), comm);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(c.momentum));
    const BatchBalancer::Slice mine = balancer.slice(comm.rank(), window);
    for (int s = 0; s < kSteps; ++s) {
      opt.zero_grad();
      auto x = data.x[s][0].narrow(0, mine.begin, mine.count), y = data.y[s][0].narrow(0, mine.begin, mine.count);
      auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
      (loss * BatchBalancer::loss_weight(mine.count, window, c.world)).backward();
      opt.step();
    }
    std::lock_guard lock(mutex);
    for (auto& p : model->parameters()) results[comm.rank()].push_back(p.detach().clone());
  });
  auto expected = reference->parameters();
  for (int r = 0; r < c.world; ++r)
    for (std::size_t i = 0; i < expected.size(); ++i)
      EXPECT_TRUE(torch::allclose(results[r][i], expected[i], 1e-4, 1e-5)) << "rank " << r << " parameter " << i
          << " max diff " << (results[r][i] - expected[i]).abs().max().item<float>();
}

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

// Linear → BatchNorm: the running statistics follow each rank's own data.
struct Normed : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  Normed() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    bn = register_module("bn", torch::nn::BatchNorm1d(3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return bn->forward(fc->forward(x)); }
};

torch::Tensor rank_data(int rank, int step, std::int64_t rows, std::int64_t cols) {
  return torch::sin(torch::arange(rows * cols, torch::kFloat32) * 0.37f * static_cast<float>(rank + 1) +
                    static_cast<float>(step)) * static_cast<float>(rank + 1) +
         static_cast<float>(rank);
}

// Ranks fed different data: with broadcast_buffers every rank holds rank 0's
// running statistics after each step (bitwise); without, they differ.
TEST(Ddp, BroadcastBuffersGivesEveryRankRankZerosRunningStatisticsAfterEachStep) {
  for (bool on : {true, false}) {
    SCOPED_TRACE(on ? "broadcast_buffers on" : "broadcast_buffers off");
    constexpr int kWorld = 3, kSteps = 3;
    std::mutex mutex;
    std::vector<std::vector<torch::Tensor>> buffers(kWorld);  // [rank][step]: every buffer, as float64
    run_ranks(kWorld, [&](Communicator& comm) {
      std::shared_ptr<Normed> model;
      {
        std::lock_guard lock(mutex);
        model = std::make_shared<Normed>();
      }
      DistributedDataParallel ddp(model, comm, {.broadcast_buffers = on});
      torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1));
      for (int s = 0; s < kSteps; ++s) {
        opt.zero_grad();
        model->forward(rank_data(comm.rank(), s, 8, 4).reshape({8, 4})).pow(2).sum().backward();
        opt.step();
        std::vector<torch::Tensor> parts;
        for (const auto& b : model->buffers()) parts.push_back(b.to(torch::kFloat64).flatten());
        std::lock_guard lock(mutex);
        buffers[comm.rank()].push_back(torch::cat(parts));
      }
    });
    for (int s = 0; s < kSteps; ++s)
      for (int r = 1; r < kWorld; ++r) {
        // running_mean, running_var (3 each), num_batches_tracked
        EXPECT_EQ(buffers[r][s][6].item<double>(), s + 1.0);
        if (on) EXPECT_TRUE(torch::equal(buffers[r][s], buffers[0][s])) << "rank " << r << " step " << s;
        else EXPECT_FALSE(torch::equal(buffers[r][s], buffers[0][s])) << "rank " << r << " step " << s;
      }
  }
}

// Parameters of every float dtype, interleaved; the loss is Σ (p · x_p) in
// float64, so p's gradient is x_p exactly (x_p drawn in p's dtype) and the
// average DDP leaves must be the average over the ranks of their x_p.
struct Mixed : torch::nn::Module {
  std::vector<torch::Tensor> ps;
  explicit Mixed(const std::vector<torch::ScalarType>& types) {
    for (std::size_t i = 0; i < types.size(); ++i)
      ps.push_back(register_parameter("p" + std::to_string(i), torch::zeros({300}, types[i])));
  }
};

torch::Tensor grad_input(int rank, int step, std::size_t i, torch::ScalarType type) {
  return (torch::sin(torch::arange(300, torch::kFloat64) * 0.11 * static_cast<double>(i + 1) +
                     static_cast<double>(rank) * 1.7 + step) * (rank + 1.5))
      .to(type);
}

// The tolerance of the comparison with a manual float64 average rounded to the
// parameter's dtype, relative to the inputs' magnitude (up to 3.5: the error of
// a sum scales with its terms): float64 2^-50 and float32 2^-22 (a few units in
// the last place, reduction order), float16 2^-10 and bfloat16 2^-7 (one unit
// in the last place: the shared-memory backend adds the 16-bit values in
// float32 and rounds once).
double tolerance(torch::ScalarType type) {
  if (type == torch::kFloat64) return 1.0 / (1ll << 50);
  if (type == torch::kFloat32) return 1.0 / (1 << 22);
  if (type == torch::kFloat16) return 1.0 / 1024;
  return 1.0 / 128;
}

TEST(Ddp, AveragesFloat64Float16AndBfloat16Parameters) {
  using torch::kBFloat16, torch::kFloat16, torch::kFloat32, torch::kFloat64;
  // The second list ends (in bucket order) with a 16-bit bucket: the step check gets a float32 bucket of its own.
  for (const std::vector<torch::ScalarType>& types :
       {std::vector{kFloat32, kFloat64, kFloat16, kBFloat16, kFloat16, kFloat32, kBFloat16},
        std::vector{kBFloat16, kFloat64, kFloat16, kFloat32}, std::vector{kFloat16, kFloat16}}) {
    constexpr int kWorld = 3, kSteps = 3;
    std::mutex mutex;
    std::vector<torch::Tensor> finals(kWorld);
    run_ranks(kWorld, [&](Communicator& comm) {
      auto model = std::make_shared<Mixed>(types);
      DistributedDataParallel ddp(model, comm, {.bucket_cap_bytes = 1000, .first_bucket_bytes = 500});
      EXPECT_GE(ddp.bucket_count(), 2);
      torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.5));
      for (int s = 0; s < kSteps; ++s) {
        opt.zero_grad();
        torch::Tensor loss = torch::zeros({}, kFloat64);
        for (std::size_t i = 0; i < types.size(); ++i)
          loss = loss + (model->ps[i].to(kFloat64) * grad_input(comm.rank(), s, i, types[i]).to(kFloat64)).sum();
        loss.backward();
        for (std::size_t i = 0; i < types.size(); ++i) {
          torch::Tensor sum = torch::zeros({300}, kFloat64);
          for (int r = 0; r < kWorld; ++r) sum += grad_input(r, s, i, types[i]).to(kFloat64);
          const torch::Tensor expected = (sum / kWorld).to(types[i]).to(kFloat64);
          const torch::Tensor got = model->ps[i].grad();
          ASSERT_EQ(got.scalar_type(), types[i]);
          const double tol = tolerance(types[i]);
          EXPECT_TRUE(torch::allclose(got.to(kFloat64), expected, tol, 4 * tol))
              << "p" << i << " (" << types[i] << ") step " << s << " max diff "
              << (got.to(kFloat64) - expected).abs().max().item<double>();
        }
        opt.step();
      }
      std::vector<torch::Tensor> parts;
      for (const auto& p : model->parameters()) parts.push_back(p.detach().to(kFloat64).flatten());
      std::lock_guard lock(mutex);
      finals[comm.rank()] = torch::cat(parts);
    });
    for (int r = 1; r < kWorld; ++r) EXPECT_TRUE(torch::equal(finals[r], finals[0])) << "rank " << r;
  }
}

// Four layers registered l0..l3 and applied l3 first: backward produces l0's
// gradients first, but the buckets, made in reverse registration order, start
// with l3's: no bucket can start while backward runs. After the first step the
// buckets follow the order the gradients came, and all but the last start
// during backward; the parameters are the bits they are without the rebuild.
struct Reversed : torch::nn::Module {
  std::vector<torch::nn::Linear> layers;
  Reversed() {
    for (int i = 0; i < 4; ++i) layers.push_back(register_module("l" + std::to_string(i), torch::nn::Linear(32, 32)));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (int i = 3; i >= 0; --i) x = torch::tanh(layers[static_cast<std::size_t>(i)]->forward(x));
    return x;
  }
};

TEST(Ddp, RebuildsBucketsInTheOrderGradientsCome) {
  constexpr int kWorld = 2, kSteps = 4;
  std::vector<torch::Tensor> finals[2];  // [rebuild][rank]
  for (bool rebuild : {false, true}) {
    SCOPED_TRACE(rebuild ? "rebuild_buckets on" : "rebuild_buckets off");
    std::mutex mutex;
    finals[rebuild].resize(kWorld);
    run_ranks(kWorld, [&](Communicator& comm) {
      std::shared_ptr<Reversed> model;
      {
        std::lock_guard lock(mutex);
        torch::manual_seed(5);
        model = std::make_shared<Reversed>();
      }
      // One layer (4224 bytes) per bucket.
      DistributedDataParallel ddp(model, comm,
                                  {.bucket_cap_bytes = 4096, .first_bucket_bytes = 4096, .rebuild_buckets = rebuild});
      ASSERT_EQ(ddp.bucket_count(), 4);
      torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
      std::int64_t overlapped = 0;
      for (int s = 0; s < kSteps; ++s) {
        opt.zero_grad();
        model->forward(rank_data(comm.rank(), s, 6, 32).reshape({6, 32})).pow(2).sum().backward();
        opt.step();
        const std::int64_t now = ddp.stats().buckets_overlapped - overlapped;
        overlapped = ddp.stats().buckets_overlapped;
        if (s == 0 || !rebuild) EXPECT_EQ(now, 0) << "step " << s;
        else EXPECT_EQ(now, ddp.bucket_count() - 1) << "step " << s;
      }
      EXPECT_EQ(ddp.bucket_count(), 4);
      std::vector<torch::Tensor> parts;
      for (const auto& p : model->parameters()) parts.push_back(p.detach().flatten());
      std::lock_guard lock(mutex);
      finals[rebuild][comm.rank()] = torch::cat(parts);
    });
  }
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(torch::equal(finals[1][r], finals[0][r])) << "rank " << r << " differs with the rebuild";
    EXPECT_TRUE(torch::equal(finals[1][r], finals[1][0])) << "rank " << r << " differs from rank 0";
  }
}

// Uneven inputs: rank r trains counts[r] batches, then joins. Every rank
// returns from join() (no hang: a wait would time out after 20 s and fail the
// test) holding the same bits, equal to one model that takes, at each step k,
// the sum of the gradients of the ranks that still train divided by the world
// size (PyTorch's default); BatchNorm's buffers, broadcast each step, equal too.
TEST(Ddp, JoinLetsRanksWithFewerBatchesShadowTheOthers) {
  constexpr int kWorld = 3;
  for (const std::vector<int>& counts : {std::vector{2, 5, 3}, std::vector{0, 3, 1}, std::vector{2, 2, 2}}) {
    SCOPED_TRACE(::testing::Message() << "batches per rank " << counts[0] << " " << counts[1] << " " << counts[2]);
    auto batch = [](int rank, int step) { return rank_data(rank, step, 8, 4).reshape({8, 4}); };
    torch::manual_seed(3);
    auto reference = std::make_shared<Normed>();
    auto initial = std::make_shared<Normed>();
    {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < reference->parameters().size(); ++i)
        initial->parameters()[i].copy_(reference->parameters()[i]);
    }
    {
      torch::optim::SGD opt(reference->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
      for (int k = 0; k < *std::max_element(counts.begin(), counts.end()); ++k) {
        opt.zero_grad();
        torch::Tensor loss = torch::zeros({});
        for (int r = 0; r < kWorld; ++r)
          if (k < counts[static_cast<std::size_t>(r)]) loss = loss + reference->forward(batch(r, k)).pow(2).sum();
        (loss / kWorld).backward();
        opt.step();
      }
    }
    std::mutex mutex;
    std::vector<torch::Tensor> params(kWorld), buffers(kWorld);
    run_ranks(
        kWorld,
        [&](Communicator& comm) {
          auto model = std::make_shared<Normed>();
          if (comm.rank() == 0) {
            torch::NoGradGuard no_grad;
            for (std::size_t i = 0; i < model->parameters().size(); ++i)
              model->parameters()[i].copy_(initial->parameters()[i]);
          }
          DistributedDataParallel ddp(model, comm);
          torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
          for (int k = 0; k < counts[static_cast<std::size_t>(comm.rank())]; ++k) {
            opt.zero_grad();
            model->forward(batch(comm.rank(), k)).pow(2).sum().backward();
            opt.step();
          }
          ddp.join();
          std::vector<torch::Tensor> p, b;
          for (const auto& t : model->parameters()) p.push_back(t.detach().flatten().clone());
          for (const auto& t : model->buffers()) b.push_back(t.to(torch::kFloat64).flatten());
          std::lock_guard lock(mutex);
          params[comm.rank()] = torch::cat(p);
          buffers[comm.rank()] = torch::cat(b);
        },
        std::chrono::seconds(20));
    std::vector<torch::Tensor> expected;
    for (const auto& t : reference->parameters()) expected.push_back(t.detach().flatten());
    const torch::Tensor want = torch::cat(expected);
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_TRUE(torch::equal(params[r], params[0])) << "rank " << r << " parameters differ from rank 0's";
      EXPECT_TRUE(torch::equal(buffers[r], buffers[0])) << "rank " << r << " buffers differ from rank 0's";
      EXPECT_TRUE(torch::allclose(params[r], want, 1e-4, 1e-5))
          << "rank " << r << " max diff " << (params[r] - want).abs().max().item<float>();
    }
  }
}

}  // namespace
// Secure aggregation: the same training as plain DDP to within the fixed
// point's rounding, every rank bitwise equal, and non-float32 refused.
TEST(Ddp, SecureAggregationTrainsAsPlainDdpToTheFixedPointsPrecision) {
  // [0] plain, [1] secure, [2] secure with a clip far below the gradients
  // (which must then differ: the gradients really go through the aggregator).
  std::vector<std::vector<torch::Tensor>> finals(3);
  for (int secure : {0, 1, 2}) {
    std::mutex construct;  // torch's generator is global: seed and build one model at a time
    run_ranks(3, [&](Communicator& comm) {
      torch::nn::Sequential model;
      {
        std::lock_guard lock(construct);
        torch::manual_seed(1);  // the same start in each of the three runs
        model = torch::nn::Sequential(torch::nn::Linear(6, 5), torch::nn::Tanh(), torch::nn::Linear(5, 3));
      }
      DdpOptions o{.bucket_cap_bytes = 64, .first_bucket_bytes = 64};  // several buckets
      if (secure) o.secure_aggregation = SecureAggregationOptions{.clip = secure == 1 ? 4.0f : 1e-3f};
      DistributedDataParallel ddp(model.ptr(), comm, o);
      EXPECT_GT(ddp.bucket_count(), 1);
      torch::optim::SGD sgd(model->parameters(), 0.1);
      for (int step = 0; step < 4; ++step) {
        const auto x = torch::full({4, 6}, 0.1 * (comm.rank() + 1) + 0.05 * step);
        sgd.zero_grad();
        model->forward(x).pow(2).sum().backward();
        sgd.step();
      }
      std::vector<torch::Tensor> mine;
      for (const auto& p : model->parameters()) mine.push_back(p.detach().clone());
      std::vector<float> flat;
      for (const auto& t : mine) flat.insert(flat.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      std::vector<float> all(flat.size() * 3);
      comm.allgather(std::span<const float>(flat), std::span<float>(all));
      for (int r = 1; r < 3; ++r)
        EXPECT_EQ(std::memcmp(all.data(), all.data() + r * flat.size(), flat.size() * sizeof(float)), 0)
            << "rank " << r << " differs from rank 0";
      if (comm.rank() == 0) finals[secure] = mine;
    });
  }
  bool clipped_differs = false;
  for (std::size_t i = 0; i < finals[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(finals[0][i], finals[1][i], 1e-5, 1e-6)) << "parameter " << i;
    clipped_differs = clipped_differs || !torch::allclose(finals[0][i], finals[2][i], 1e-3, 1e-4);
  }
  EXPECT_TRUE(clipped_differs) << "a clip of 1e-3 changed nothing: the gradients did not go through the aggregator";
  run_ranks(2, [](Communicator& comm) {
    auto model = torch::nn::Linear(torch::nn::LinearOptions(3, 2));
    model->to(torch::kFloat64);
    DdpOptions o;
    o.secure_aggregation = SecureAggregationOptions{};
    EXPECT_THROW(DistributedDataParallel(model.ptr(), comm, o), InputError);
  });
}

}  // namespace dagr
