// DDP communication hooks (comm_hook.h, powersgd.h), ranks as threads: the
// 16-bit hooks average within their format's rounding; PowerSGD at full rank
// is the exact average, its error feedback carries what the approximation
// left out (and matters), its state round-trips through a checkpoint, and it
// survives join(); the secure hook is what the secure_aggregation option does.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <functional>
#include <mutex>

#include "dagr/error.h"
#include "dagr/train/checkpoint.h"
#include "dagr/train/comm_hook.h"
#include "dagr/train/ddp.h"
#include "dagr/train/powersgd.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

// Rank r's constant gradient for parameter `which` of shape `shape` (its own generator: no global state).
torch::Tensor rank_gradient(int rank, int which, torch::IntArrayRef shape) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 * rank + which + 1);
  return torch::randn(shape, gen, torch::kFloat32);
}

// loss = Σ_i <p_i, C_i>: every parameter's gradient is C_i, whatever p is.
void backward_with(torch::nn::Module& model, const std::vector<torch::Tensor>& gradients) {
  torch::Tensor loss = torch::zeros({});
  const auto params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) loss = loss + (params[i] * gradients[i]).sum();
  loss.backward();
}

std::vector<torch::Tensor> gradients_of(int rank, torch::nn::Module& model) {
  std::vector<torch::Tensor> g;
  int i = 0;
  for (const auto& p : model.parameters()) g.push_back(rank_gradient(rank, i++, p.sizes()));
  return g;
}

TEST(CommHook, Fp16AndBf16AverageWithinTheFormatsRounding) {
  constexpr int kWorld = 3;
  for (torch::ScalarType type : {torch::kFloat16, torch::kBFloat16}) {
    SCOPED_TRACE(type == torch::kFloat16 ? "fp16" : "bf16");
    const double u = type == torch::kFloat16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);  // unit roundoff
    run_ranks(kWorld, [&](Communicator& comm) {
      auto model = torch::nn::Sequential(torch::nn::Linear(20, 30), torch::nn::Linear(30, 7));
      DistributedDataParallel ddp(model.ptr(), comm, {.bucket_cap_bytes = 1024, .first_bucket_bytes = 512});
      EXPECT_GE(ddp.bucket_count(), 2);
      ddp.register_comm_hook(type == torch::kFloat16 ? fp16_compress_hook() : bf16_compress_hook());
      EXPECT_EQ(ddp.comm_hook().name(), type == torch::kFloat16 ? "fp16" : "bf16");
      for (int step = 0; step < 2; ++step) {  // a second step: the step check still agrees
        model->zero_grad();
        backward_with(*model, gradients_of(comm.rank() + step, *model));
        const auto params = model->parameters();
        for (std::size_t i = 0; i < params.size(); ++i) {
          torch::Tensor sum = torch::zeros_like(params[i]), magnitude = torch::zeros_like(params[i]);
          for (int r = 0; r < kWorld; ++r) {
            const torch::Tensor g = rank_gradient(r + step, static_cast<int>(i), params[i].sizes());
            sum += g;
            magnitude += g.abs();
          }
          const torch::Tensor got = params[i].grad();
          // Each rank's value rounded once, the sum once more: 2u of Σ|g_r| / N, and the 16-bit subnormals' step.
          const torch::Tensor bound = 2.01 * u * magnitude / kWorld + 1e-7;
          EXPECT_TRUE(((got - sum / kWorld).abs() <= bound).all().item<bool>())
              << "parameter " << i << " step " << step << " max error "
              << ((got - sum / kWorld).abs() - bound).max().item<double>() << " beyond the bound";
          // It went through 16 bits: every value is one of the format's.
          EXPECT_TRUE(torch::equal(got.to(type).to(torch::kFloat32), got)) << "parameter " << i;
        }
      }
    });
  }
}

TEST(CommHook, RegisteringTwiceOrBesideSecureAggregationIsAnInputError) {
  run_ranks(2, [](Communicator& comm) {
    auto model = torch::nn::Linear(3, 2);
    DistributedDataParallel ddp(model.ptr(), comm);
    EXPECT_EQ(ddp.comm_hook().name(), "allreduce");
    ddp.register_comm_hook(fp16_compress_hook());
    EXPECT_THROW(ddp.register_comm_hook(bf16_compress_hook()), InputError);
    DdpOptions o;
    o.secure_aggregation = SecureAggregationOptions{};
    DistributedDataParallel secure(model.ptr(), comm, o);
    EXPECT_EQ(secure.comm_hook().name(), "secure");
    EXPECT_THROW(secure.register_comm_hook(fp16_compress_hook()), InputError);
    EXPECT_THROW(powersgd_hook({.rank = 0}), InputError);
  });
}

// A matrix as wide as PowerSGD's rank (4 × 6 at rank 4) is rebuilt exactly:
// P spans the average's columns. Forced to compress (min_compression_rate 0).
TEST(CommHook, PowerSgdAtFullRankIsTheExactAverage) {
  constexpr int kWorld = 3;
  run_ranks(kWorld, [](Communicator& comm) {
    auto model = torch::nn::Sequential(torch::nn::Linear(6, 4), torch::nn::Linear(4, 9));
    DistributedDataParallel ddp(model.ptr(), comm);
    auto hook = powersgd_hook({.rank = 4, .start_iter = 0, .min_compression_rate = 0});
    ddp.register_comm_hook(hook);
    for (int step = 0; step < 3; ++step) {  // steps after the first start from the last Q (warm start)
      model->zero_grad();
      backward_with(*model, gradients_of(comm.rank() + step, *model));
      const auto params = model->parameters();
      for (std::size_t i = 0; i < params.size(); ++i) {
        torch::Tensor sum = torch::zeros_like(params[i]);
        for (int r = 0; r < kWorld; ++r) sum += rank_gradient(r + step, static_cast<int>(i), params[i].sizes());
        EXPECT_TRUE(torch::allclose(params[i].grad(), sum / kWorld, 1e-4, 1e-5))
            << "parameter " << i << " step " << step << " max diff "
            << (params[i].grad() - sum / kWorld).abs().max().item<double>();
      }
    }
    EXPECT_EQ(hook->iteration(), 3);
    // Compressed: biases (4 + 9) plainly, P and Q of 4 × 6 (4·4 + 6·4) and 9 × 4 (9·4 + 4·4).
    EXPECT_EQ(hook->sent_elements(), 13 + 40 + 52);
    EXPECT_EQ(hook->dense_elements(), 4 * 6 + 4 + 9 * 4 + 9);
  });
}

// One hook and one bucket index, given buckets of another layout and other
// memory from step to step (as DDP's rebuilt buckets and a given-up step's
// stand-in zeros are): each step must be laid out for the bucket it gets. At
// full rank each result is the exact average. Steps alternate between the
// last bucket's path (collectives in the wait) and the others'.
TEST(CommHook, PowerSgdFollowsABucketWhoseLayoutChanges) {
  constexpr int kWorld = 2;
  run_ranks(kWorld, [](Communicator& comm) {
    auto hook = powersgd_hook({.rank = 6, .start_iter = 0, .min_compression_rate = 0});
    const std::vector<std::vector<std::vector<std::int64_t>>> layouts = {{{4, 3}, {5}}, {{2, 6}, {3, 3}, {1}}};
    for (int step = 0; step < 6; ++step) {
      const auto& shapes = layouts[static_cast<std::size_t>(step % 2)];
      GradBucket bucket;
      bucket.last = step % 3 != 1;
      bucket.shapes = shapes;
      std::vector<torch::Tensor> mine, average;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const int which = 10 * (step % 2) + static_cast<int>(i);  // the two layouts' parameters differ
        bucket.parameters.push_back(static_cast<std::size_t>(which));
        mine.push_back(rank_gradient(comm.rank() + step, which, shapes[i]).reshape({-1}));
        torch::Tensor sum = torch::zeros_like(mine.back());
        for (int r = 0; r < kWorld; ++r) sum += rank_gradient(r + step, which, shapes[i]).reshape({-1});
        average.push_back(sum / kWorld);
      }
      bucket.buffer = torch::cat(mine);  // new memory every step
      hook->run(comm, bucket).wait();
      const torch::Tensor expected = torch::cat(average);
      EXPECT_TRUE(torch::allclose(bucket.buffer, expected, 1e-4, 1e-5))
          << "step " << step << " max diff " << (bucket.buffer - expected).abs().max().item<double>();
    }
  });
}

// Constant gradients C_r through rank-1 PowerSGD for K steps. With error
// feedback what each step leaves out comes back later: the K approximations
// plus the ranks' average error are exactly K times the average gradient, so
// the approximations' mean tends to it. Without, it stays the rank-1 part.
TEST(CommHook, PowerSgdErrorFeedbackCarriesTheError) {
  constexpr int kWorld = 2, kSteps = 60;
  double relative_error[2] = {0, 0};  // [error_feedback]
  for (bool feedback : {false, true}) {
    SCOPED_TRACE(feedback ? "with error feedback" : "without error feedback");
    std::mutex mutex;
    run_ranks(kWorld, [&](Communicator& comm) {
      auto model = torch::nn::Linear(torch::nn::LinearOptions(16, 12).bias(false));
      DistributedDataParallel ddp(model.ptr(), comm);
      auto hook = powersgd_hook({.rank = 1, .start_iter = 0, .error_feedback = feedback});
      ddp.register_comm_hook(hook);
      const torch::Tensor mine = rank_gradient(comm.rank(), 0, {12, 16});
      torch::Tensor average = torch::zeros({12, 16});
      for (int r = 0; r < kWorld; ++r) average += rank_gradient(r, 0, {12, 16}) / kWorld;
      torch::Tensor sum = torch::zeros({12, 16});
      for (int step = 0; step < kSteps; ++step) {
        model->zero_grad();
        backward_with(*model, {mine});
        sum += model->weight.grad();
      }
      const auto state = hook->state(comm);  // errors averaged over the ranks
      if (feedback) {
        const torch::Tensor error = state.at("powersgd/error/0");
        EXPECT_TRUE(torch::allclose(sum + error, kSteps * average, 1e-4, 1e-3))
            << "max diff " << (sum + error - kSteps * average).abs().max().item<double>();
      } else {
        EXPECT_EQ(state.count("powersgd/error/0"), 0u);
      }
      std::lock_guard lock(mutex);
      relative_error[feedback] = ((sum / kSteps - average).norm() / average.norm()).item<double>();
    });
  }
  std::printf("mean approximation's relative error after %d steps: %.3f with error feedback, %.3f without\n", kSteps,
              relative_error[1], relative_error[0]);
  EXPECT_LT(relative_error[1], 0.2) << "with error feedback the mean approximation should tend to the average";
  EXPECT_GT(relative_error[0], 0.4) << "without error feedback rank 1 should leave much of a random 12 x 16 matrix out";
}

// A step whose collectives fail (rank 1 leaves after the first step) leaves
// PowerSGD's error as the last good step left it: recovery (--elastic) carries
// on with it, and must not feed the failed step's gradient back again.
TEST(CommHook, PowerSgdErrorSurvivesAFailedStep) {
  torch::Tensor before, after;
  auto error_of = [](PowerSgdHook& hook) {  // the state needs a group to average over: one of its own
    torch::Tensor e;
    run_ranks(1, [&](Communicator& solo) { e = hook.state(solo).at("powersgd/error/0").clone(); });
    return e;
  };
  bool failed = false;
  run_ranks(2, [&](Communicator& comm) {
    auto model = torch::nn::Linear(torch::nn::LinearOptions(16, 12).bias(false));
    auto hook = powersgd_hook({.rank = 1, .start_iter = 0});
    DistributedDataParallel ddp(model.ptr(), comm);
    ddp.register_comm_hook(hook);
    backward_with(*model, {rank_gradient(comm.rank(), 0, {12, 16})});
    if (comm.rank() == 1) return;  // leaves the group
    before = error_of(*hook);
    model->zero_grad();
    try {
      backward_with(*model, {rank_gradient(0, 1, {12, 16})});
    } catch (const std::exception&) {
      failed = true;
    }
    after = error_of(*hook);
  });
  ASSERT_TRUE(failed) << "the second step should fail: rank 1 left";
  ASSERT_GT(before.abs().max().item<double>(), 0) << "rank 1 of a 12 x 16 matrix leaves an error";
  EXPECT_TRUE(torch::equal(after, before)) << "max change " << (after - before).abs().max().item<double>();
}

// An error given to load_state() in any layout (here transposed, not
// contiguous) is the same error: the same step as with its contiguous copy.
TEST(CommHook, PowerSgdLoadsAnErrorOfAnyLayout) {
  std::vector<torch::Tensor> gradient(2);
  for (int contiguous = 0; contiguous < 2; ++contiguous) {
    run_ranks(2, [&](Communicator& comm) {
      auto model = torch::nn::Linear(torch::nn::LinearOptions(16, 12).bias(false));
      DistributedDataParallel ddp(model.ptr(), comm);
      auto hook = powersgd_hook({.rank = 1, .start_iter = 0});
      const torch::Tensor error = rank_gradient(7, 0, {16, 12}).t();  // 12 × 16, strides (1, 12)
      hook->load_state({{"powersgd/iter", torch::tensor(std::int64_t{0})},
                        {"powersgd/error/0", contiguous ? error.contiguous() : error}});
      ddp.register_comm_hook(hook);
      backward_with(*model, {rank_gradient(comm.rank(), 0, {12, 16})});
      if (comm.rank() == 0) gradient[static_cast<std::size_t>(contiguous)] = model->weight.grad().clone();
    });
  }
  EXPECT_TRUE(torch::equal(gradient[0], gradient[1]))
      << "max diff " << (gradient[0] - gradient[1]).abs().max().item<double>();
}

// Six steps in one go, or three, a checkpoint (encoded and decoded as dagr
// train writes it), a fresh DDP and hook, three more: the same parameters.
// Without loading the hook's state the resumed run goes elsewhere.
TEST(CommHook, PowerSgdStateRoundTripsThroughACheckpoint) {
  constexpr int kWorld = 2;
  auto make = [] { return torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::Tanh(), torch::nn::Linear(16, 4)); };
  auto batch = [](int rank, int step) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(77 * rank + step);
    return torch::randn({5, 8}, gen);
  };
  const PowerSgdOptions options{.rank = 1, .start_iter = 1, .min_compression_rate = 1};
  // [0] uninterrupted, [1] resumed with the hook's state, [2] resumed without it.
  std::vector<std::vector<torch::Tensor>> finals(3);
  std::mutex construct;
  for (int run = 0; run < 3; ++run) {
    run_ranks(kWorld, [&](Communicator& comm) {
      torch::nn::Sequential model{nullptr};
      {
        std::lock_guard lock(construct);
        torch::manual_seed(4);
        model = make();
      }
      auto steps = [&](torch::nn::Sequential& m, int from, int to) {
        torch::optim::SGD opt(m->parameters(), 0.05);
        for (int s = from; s < to; ++s) {
          opt.zero_grad();
          (m->forward(batch(comm.rank(), s)) - 1).pow(2).mean().backward();
          opt.step();
        }
      };
      std::map<std::string, torch::Tensor> saved;
      {
        DistributedDataParallel ddp(model.ptr(), comm);
        auto hook = powersgd_hook(options);
        ddp.register_comm_hook(hook);
        steps(model, 0, run == 0 ? 6 : 3);
        if (run != 0) {
          TrainingCheckpoint c;
          c.comm_hook = hook->state(comm);
          saved = decode_checkpoint(encode_checkpoint(c), "in memory").comm_hook;
          EXPECT_EQ(saved.at("powersgd/iter").item<std::int64_t>(), 3);
        }
      }
      if (run != 0) {
        DistributedDataParallel ddp(model.ptr(), comm);
        auto hook = powersgd_hook(options);
        if (run == 1) hook->load_state(saved);
        ddp.register_comm_hook(hook);
        steps(model, 3, 6);
      }
      std::vector<torch::Tensor> mine;
      for (const auto& p : model->parameters()) mine.push_back(p.detach().clone());
      if (comm.rank() == 0) finals[static_cast<std::size_t>(run)] = mine;
    });
  }
  bool without_differs = false;
  for (std::size_t i = 0; i < finals[0].size(); ++i) {
    EXPECT_TRUE(torch::allclose(finals[1][i], finals[0][i], 1e-5, 1e-6))
        << "parameter " << i << " max diff " << (finals[1][i] - finals[0][i]).abs().max().item<double>();
    without_differs = without_differs || !torch::allclose(finals[2][i], finals[0][i], 1e-4, 1e-5);
  }
  EXPECT_TRUE(without_differs) << "resuming without the hook's state changed nothing: the state is not used";
}

// join() with PowerSGD: the joined rank runs the hook on zeros, issuing the
// same collectives (P, then Q) in the same order; no hang, equal parameters.
TEST(CommHook, PowerSgdWithJoin) {
  constexpr int kWorld = 2;
  std::mutex mutex;
  std::vector<torch::Tensor> finals(kWorld);
  std::mutex construct;
  run_ranks(
      kWorld,
      [&](Communicator& comm) {
        torch::nn::Sequential model{nullptr};
        {
          std::lock_guard lock(construct);
          model = torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::Tanh(), torch::nn::Linear(16, 4));
        }
        DistributedDataParallel ddp(model.ptr(), comm, {.bucket_cap_bytes = 256, .first_bucket_bytes = 128});
        ddp.register_comm_hook(powersgd_hook({.rank = 2, .start_iter = 1, .min_compression_rate = 1}));
        torch::optim::SGD opt(model->parameters(), 0.1);
        for (int s = 0; s < (comm.rank() == 0 ? 2 : 5); ++s) {
          opt.zero_grad();
          model->forward(torch::full({3, 8}, 0.1 * (comm.rank() + 1) + 0.05 * s)).pow(2).sum().backward();
          opt.step();
        }
        ddp.join();
        std::vector<torch::Tensor> parts;
        for (const auto& p : model->parameters()) parts.push_back(p.detach().flatten());
        std::lock_guard lock(mutex);
        finals[comm.rank()] = torch::cat(parts);
      },
      std::chrono::seconds(20));
  EXPECT_TRUE(torch::equal(finals[0], finals[1]));
}

// The secure hook registered by hand trains bitwise as the secure_aggregation option.
TEST(CommHook, SecureHookIsTheSecureAggregationOption) {
  std::vector<torch::Tensor> finals(2);
  std::mutex construct;
  for (int by_hook : {0, 1}) {
    run_ranks(2, [&](Communicator& comm) {
      torch::nn::Sequential model{nullptr};
      {
        std::lock_guard lock(construct);
        torch::manual_seed(2);
        model = torch::nn::Sequential(torch::nn::Linear(6, 5), torch::nn::Tanh(), torch::nn::Linear(5, 3));
      }
      DdpOptions o{.bucket_cap_bytes = 64, .first_bucket_bytes = 64};
      if (!by_hook) o.secure_aggregation = SecureAggregationOptions{.clip = 4.0f};
      DistributedDataParallel ddp(model.ptr(), comm, o);
      if (by_hook) ddp.register_comm_hook(secure_aggregation_hook(comm, {.clip = 4.0f}));
      torch::optim::SGD sgd(model->parameters(), 0.1);
      for (int step = 0; step < 3; ++step) {
        sgd.zero_grad();
        model->forward(torch::full({4, 6}, 0.1 * (comm.rank() + 1) + 0.05 * step)).pow(2).sum().backward();
        sgd.step();
      }
      std::vector<torch::Tensor> parts;
      for (const auto& p : model->parameters()) parts.push_back(p.detach().flatten());
      if (comm.rank() == 0) finals[static_cast<std::size_t>(by_hook)] = torch::cat(parts);
    });
  }
  EXPECT_TRUE(torch::equal(finals[0], finals[1]));
}

}  // namespace
}  // namespace dagr

namespace dagr {
namespace {

// PowerSGD's uncompressed hook (fp16 here) averages every bucket before
// start_iter, and after it the buckets with no matrix worth compressing (the
// biases, in buckets of their own): those gradients are fp16 values within
// its rounding of the average; the compressed weights are not. A hook that
// does not carry DDP's check values is refused.
TEST(CommHook, PowerSgdSendsWhatItDoesNotCompressThroughItsUncompressedHook) {
  constexpr int kWorld = 2, kStart = 2;
  run_ranks(kWorld, [](Communicator& comm) {
    auto model = torch::nn::Sequential(torch::nn::Linear(20, 30), torch::nn::Linear(30, 7));
    DdpOptions options;
    options.first_bucket_bytes = options.bucket_cap_bytes = 16;  // a bucket per parameter
    DistributedDataParallel ddp(model.ptr(), comm, options);
    auto hook = powersgd_hook({.rank = 1, .start_iter = kStart, .uncompressed_hook = fp16_compress_hook()});
    ddp.register_comm_hook(hook);
    for (int step = 0; step < kStart + 2; ++step) {
      model->zero_grad();
      backward_with(*model, gradients_of(comm.rank() + step, *model));
      const auto params = model->parameters();
      for (std::size_t i = 0; i < params.size(); ++i) {
        SCOPED_TRACE("step " + std::to_string(step) + ", parameter " + std::to_string(i));
        const torch::Tensor got = params[i].grad();
        const bool in_fp16 = torch::equal(got.to(torch::kFloat16).to(torch::kFloat32), got);
        if (step >= kStart && params[i].dim() == 2) {
          EXPECT_FALSE(in_fp16) << "a compressed matrix went through the uncompressed hook";
          continue;
        }
        EXPECT_TRUE(in_fp16) << "not through the fp16 hook";
        torch::Tensor mean = torch::zeros_like(got), magnitude = torch::zeros_like(got);
        for (int r = 0; r < kWorld; ++r) {
          const torch::Tensor g = rank_gradient(r + step, static_cast<int>(i), got.sizes());
          mean += g / kWorld;
          magnitude += g.abs() / kWorld;
        }
        // As in Fp16AndBf16AverageWithinTheFormatsRounding: 2u of Σ|g_r| / N.
        EXPECT_TRUE(((got - mean).abs() <= 2.01 * std::ldexp(1.0, -11) * magnitude + 1e-7).all().item<bool>())
            << "max diff " << (got - mean).abs().max().item<double>();
      }
    }
    EXPECT_EQ(hook->iteration(), kStart + 2);
  });
  struct NoCheck : CommHook {
    std::string name() const override { return "no check"; }
    HookWork run(Communicator&, GradBucket&) override { return HookWork(); }
  };
  EXPECT_THROW(powersgd_hook({.uncompressed_hook = std::make_shared<NoCheck>()}), InputError);
}

// Tied weights: a Linear used twice is one parameter to DDP (as in PyTorch),
// so its gradient is one slice, averaged once, and a hook that rewrites its
// bucket in place (PowerSGD writes M + E over the gradient) has no second
// slice copied from it. The gradient is the same through PowerSGD at full rank
// as through plain allreduce.
TEST(CommHook, TiedWeightsAreOneParameter) {
  struct Spy : CommHook {
    std::shared_ptr<CommHook> inner;
    std::size_t seen = 0;
    std::string name() const override { return inner->name(); }
    bool carries_check() const override { return inner->carries_check(); }
    HookWork run(Communicator& comm, GradBucket& bucket) override {
      seen += bucket.parameters.size();
      return inner->run(comm, bucket);
    }
  };
  std::vector<torch::Tensor> gradient(2);
  for (int powersgd = 0; powersgd < 2; ++powersgd) {
    run_ranks(2, [&](Communicator& comm) {
      auto shared = torch::nn::Linear(6, 6);
      {  // the same start in both runs (the global generator is shared by the rank threads)
        torch::NoGradGuard no_grad;
        at::Generator init = at::make_generator<at::CPUGeneratorImpl>(3);
        shared->weight.copy_(torch::randn({6, 6}, init) / 3);
        shared->bias.copy_(torch::randn({6}, init) / 3);
      }
      auto model = torch::nn::Sequential(shared, torch::nn::Tanh(), shared);
      ASSERT_EQ(model->named_parameters().size(), 4u);
      DdpOptions options;
      options.first_bucket_bytes = options.bucket_cap_bytes = 16;  // a bucket per parameter
      DistributedDataParallel ddp(model.ptr(), comm, options);
      auto spy = std::make_shared<Spy>();
      spy->inner = powersgd ? powersgd_hook({.rank = 6, .start_iter = 0, .min_compression_rate = 0}) : allreduce_hook();
      ddp.register_comm_hook(spy);
      for (int step = 0; step < 3; ++step) {  // steps 2 and 3 in the rebuilt buckets
        model->zero_grad();
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(10 * comm.rank() + step);
        model->forward(torch::randn({4, 6}, gen)).pow(2).sum().backward();
      }
      EXPECT_EQ(spy->seen, 3u * 2u) << "weight and bias once per step, not twice";
      if (comm.rank() == 0) gradient[static_cast<std::size_t>(powersgd)] = shared->weight.grad().clone();
    });
  }
  EXPECT_TRUE(torch::allclose(gradient[1], gradient[0], 1e-4, 1e-5))
      << "max diff " << (gradient[1] - gradient[0]).abs().max().item<double>();
}

// The step's last bucket (GradBucket::last), which DDP waits for as soon as
// backward ends, starts on the thread that waits: run() starts nothing
// (deferred(), the buffer untouched until wait()), and wait() leaves what the
// asynchronous path leaves, bit for bit, also behind an earlier bucket whose
// collectives are still in flight.
TEST(CommHook, TheLastBucketStartsInTheWait) {
  const std::vector<std::pair<std::string, std::function<std::shared_ptr<CommHook>()>>> hooks = {
      {"allreduce", [] { return allreduce_hook(); }},
      {"fp16", [] { return fp16_compress_hook(); }},
      {"bf16", [] { return bf16_compress_hook(); }},
      {"powersgd", [] { return powersgd_hook({.rank = 2, .start_iter = 0, .min_compression_rate = 0}); }}};
  for (const auto& [name, make] : hooks) {
    SCOPED_TRACE(name);
    run_ranks(2, [&](Communicator& comm) {
      std::array<std::array<torch::Tensor, 2>, 2> result;  // [deferred][bucket]
      for (int deferred = 0; deferred < 2; ++deferred) {
        const std::shared_ptr<CommHook> hook = make();
        torch::Tensor first = rank_gradient(comm.rank(), 0, {40}), second = rank_gradient(comm.rank(), 1, {48});
        GradBucket b0{.index = 0, .last = false, .buffer = first, .parameters = {0}, .shapes = {{40}}};
        GradBucket b1{.index = 1, .last = deferred == 1, .buffer = second, .parameters = {1}, .shapes = {{8, 6}}};
        HookWork w0 = hook->run(comm, b0);
        HookWork w1 = hook->run(comm, b1);
        EXPECT_FALSE(w0.deferred());
        EXPECT_EQ(w1.deferred(), deferred == 1);
        if (deferred) {
          EXPECT_TRUE(torch::equal(second, rank_gradient(comm.rank(), 1, {48}))) << "changed before wait()";
        }
        w0.wait();
        w1.wait();
        EXPECT_FALSE(w1.deferred());
        EXPECT_FALSE(torch::equal(second, rank_gradient(comm.rank(), 1, {48}))) << "not averaged";
        result[deferred] = {first, second};
      }
      for (int k = 0; k < 2; ++k)
        EXPECT_TRUE(torch::equal(result[0][k], result[1][k]))
            << "bucket " << k << ": max diff " << (result[0][k] - result[1][k]).abs().max().item<double>();
    });
  }
}

// DDP's step check rides in the lossy hooks' own collectives (no collective of
// its own): given by hand, rank-specific integers up to 4095 come back as
// float32's sum divided by N, bit for bit (the 16-bit hooks through base-8
// digits, PowerSGD beside its Ps or with its plain values), the gradients
// still averaged.
TEST(CommHook, LossyHooksAverageTheStepCheckExactly) {
  constexpr int kWorld = 3;
  const auto value = [](int r, int i) { return static_cast<float>(std::array{r, 63 - 20 * r, 3969 - 1000 * r, 4095 - r}[i]); };
  std::vector<std::pair<std::string, std::function<std::shared_ptr<CommHook>()>>> hooks = {
      {"fp16", [] { return fp16_compress_hook(); }},
      {"bf16", [] { return bf16_compress_hook(); }},
      {"powersgd", [] { return powersgd_hook({.rank = 1, .start_iter = 0, .min_compression_rate = 0}); }},
      {"powersgd, plain only", [] { return powersgd_hook({.rank = 1, .start_iter = 0, .min_compression_rate = 100}); }},
      {"powersgd, before start_iter", [] { return powersgd_hook({.rank = 1, .start_iter = 5}); }},
      {"powersgd, before start_iter, fp16",
       [] { return powersgd_hook({.rank = 1, .start_iter = 5, .uncompressed_hook = fp16_compress_hook()}); }},
      {"powersgd, plain only, bf16", [] {
         return powersgd_hook(
             {.rank = 1, .start_iter = 0, .min_compression_rate = 100, .uncompressed_hook = bf16_compress_hook()});
       }}};
  for (const auto& [name, make] : hooks) {
    SCOPED_TRACE(name);
    run_ranks(kWorld, [&](Communicator& comm) {
      auto hook = make();
      ASSERT_TRUE(hook->carries_check());
      const int r = comm.rank();
      GradBucket bucket{.index = 0, .last = true, .buffer = torch::empty({12 * 5 + 5 + 4}), .parameters = {0, 1},
                        .shapes = {{12, 5}, {5}}, .check = 4};
      bucket.buffer.narrow(0, 0, 65).copy_(rank_gradient(r, 0, {65}));
      for (int i = 0; i < 4; ++i) bucket.buffer[65 + i] = value(r, i);
      hook->run(comm, bucket).wait();
      for (int i = 0; i < 4; ++i) {
        float sum = 0;
        for (int k = 0; k < kWorld; ++k) sum += value(k, i);
        EXPECT_EQ(bucket.buffer[65 + i].item<float>(), sum / static_cast<float>(kWorld)) << "check value " << i;
      }
      torch::Tensor mean = torch::zeros({65});
      for (int k = 0; k < kWorld; ++k) mean += rank_gradient(k, 0, {65}) / kWorld;
      if (name != "powersgd") {  // rank 1 of a 12 × 5 matrix: only the bias is exact
        EXPECT_TRUE(torch::allclose(bucket.buffer.narrow(0, 0, 65), mean, 1e-2, 1e-2));
      }
      EXPECT_TRUE(torch::allclose(bucket.buffer.narrow(0, 60, 5), mean.narrow(0, 60, 5), 1e-2, 1e-2));
    });
  }
}

// Through DDP: the last bucket hands the hook its 4 check values, and ranks
// that reduce different backward passes (rank 1 one more, under no_sync) still
// both raise, with every lossy hook.
TEST(CommHook, DdpHandsTheCheckToLossyHooksAndItStillCatchesDifferentSteps) {
  struct Recorder : CommHook {
    std::shared_ptr<CommHook> inner;
    std::vector<std::int64_t> checks;
    std::string name() const override { return inner->name(); }
    bool carries_check() const override { return true; }
    HookWork run(Communicator& comm, GradBucket& bucket) override {
      checks.push_back(bucket.check);
      return inner->run(comm, bucket);
    }
  };
  std::mutex construct;
  for (int which = 0; which < 3; ++which) {
    run_ranks(2, [&](Communicator& comm) {
      torch::nn::Sequential model{nullptr};
      {
        std::lock_guard lock(construct);
        model = torch::nn::Sequential(torch::nn::Linear(6, 5), torch::nn::Linear(5, 3));
      }
      DistributedDataParallel ddp(model.ptr(), comm, {.bucket_cap_bytes = 64, .first_bucket_bytes = 64});
      auto recorder = std::make_shared<Recorder>();
      recorder->inner = which == 0 ? fp16_compress_hook() : which == 1 ? bf16_compress_hook()
                                                                     : powersgd_hook({.rank = 1, .start_iter = 0});
      ddp.register_comm_hook(recorder);
      SCOPED_TRACE(recorder->name());
      for (int step = 0; step < 2; ++step) {
        model->zero_grad();
        backward_with(*model, gradients_of(comm.rank(), *model));
      }
      ASSERT_GE(recorder->checks.size(), 4u);  // 2 steps of at least 2 buckets
      EXPECT_EQ(recorder->checks.back(), 4);
      for (std::size_t k = 0; k + 1 < recorder->checks.size() / 2; ++k) EXPECT_EQ(recorder->checks[k], 0);
      if (comm.rank() == 1) {
        auto guard = ddp.no_sync();
        backward_with(*model, gradients_of(comm.rank(), *model));
      }
      model->zero_grad();
      try {
        backward_with(*model, gradients_of(comm.rank(), *model));
        ADD_FAILURE() << "rank " << comm.rank() << ": a step the ranks reduced at different passes went through";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("different steps"), std::string::npos) << e.what();
      }
    });
  }
}

}  // namespace
}  // namespace dagr
