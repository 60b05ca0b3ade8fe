// DistributedDataParallel after an exception in backward: the step is given up
// on every rank (the rank that threw sees its own error, the others an error
// saying a peer failed), and training goes on with the ranks' parameters
// bitwise equal; or, when the ranks reduce different backward passes, every
// later backward raises. Never does one rank train on its own gradients while
// the others average. A step that fails while another rank shadows it from
// join() is skipped by the ranks that train; join() goes on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <string>
#include <vector>

#include "dagr/train/ddp.h"
#include "rank_threads.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Identity forward; backward throws when told to (user code failing in a module).
struct ThrowInBackward : torch::autograd::Function<ThrowInBackward> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, bool fail) {
    ctx->saved_data["fail"] = fail;
    return x.clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (ctx->saved_data["fail"].toBool()) throw std::runtime_error("planted failure in backward");
    return {grads[0], torch::Tensor()};
  }
};

// fc1 → (may throw in backward) → ReLU → fc2. Backward reaches fc2's
// parameters first, then throws before fc1's: with small buckets, one bucket
// has started its allreduce and one never will.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 4));
  }
  torch::Tensor forward(const torch::Tensor& x, bool fail) {
    return fc2->forward(torch::relu(ThrowInBackward::apply(fc1->forward(x), fail)));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

torch::Tensor batch_of(int rank, int step) {
  return torch::sin(torch::arange(16 * 8, torch::kFloat32) * 0.01f * static_cast<float>((rank + 1) * (step + 3)))
      .reshape({16, 8});
}

torch::Tensor flat_parameters(Net& net) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : net->parameters()) parts.push_back(p.detach().flatten().clone());
  return torch::cat(parts);
}

struct Outcome {
  std::vector<std::string> steps;  // "ok" or the error of each step
  torch::Tensor parameters;
};

// Runs `steps` SGD steps on 2 ranks; `plan(rank, step)` says what that rank does:
// 0 a normal step, 1 a step whose backward throws, 2 an extra backward under
// no_sync before the step's own, 3 a step whose backward throws after every
// parameter's gradient is in (in the input's gradient: the last bucket is
// ready by then). With rank0_steps >= 0, rank 0 runs that many
// steps instead and both ranks call join() after their last.
std::vector<Outcome> train(int steps, const std::function<int(int, int)>& plan, int rank0_steps = -1) {
  std::vector<Outcome> outcomes(2);
  dagr::testing::run_ranks(
      2,
      [&](dagr::Communicator& comm) {
        Net net;
        dagr::DistributedDataParallel ddp(net.ptr(), comm, {.bucket_cap_bytes = 1024, .first_bucket_bytes = 1024});
        EXPECT_GE(ddp.bucket_count(), 2);
        torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
        Outcome& out = outcomes[static_cast<std::size_t>(comm.rank())];
        const int own_steps = comm.rank() == 0 && rank0_steps >= 0 ? rank0_steps : steps;
        for (int step = 0; step < own_steps; ++step) {
          const int what = plan(comm.rank(), step);
          optimizer.zero_grad();
          if (what == 2) {
            auto guard = ddp.no_sync();
            net->forward(batch_of(comm.rank(), step), false).pow(2).mean().backward();
          }
          torch::Tensor input = batch_of(comm.rank(), step);
          if (what == 3) input = ThrowInBackward::apply(input.requires_grad_(), true);
          const auto loss = net->forward(input, what == 1).pow(2).mean();
          try {
            loss.backward();
            optimizer.step();
            out.steps.push_back("ok");
          } catch (const std::exception& e) {
            out.steps.push_back(e.what());
          }
        }
        if (rank0_steps >= 0) ddp.join();
        out.parameters = flat_parameters(net);
      },
      std::chrono::seconds(10));
  return outcomes;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(DdpRecovery, AThrowInOneRanksBackwardSkipsTheStepEverywhereAndTrainingGoesOn) {
  const auto out = train(6, [](int rank, int step) { return rank == 1 && step == 2 ? 1 : 0; });
  for (int rank = 0; rank < 2; ++rank)
    for (int step = 0; step < 6; ++step) {
      const std::string& s = out[static_cast<std::size_t>(rank)].steps[static_cast<std::size_t>(step)];
      if (step != 2) {
        EXPECT_EQ(s, "ok") << "rank " << rank << " step " << step;
      }
    }
  EXPECT_TRUE(contains(out[1].steps[2], "planted failure")) << out[1].steps[2];
  EXPECT_TRUE(contains(out[0].steps[2], "another rank failed")) << out[0].steps[2];
  ASSERT_TRUE(out[0].parameters.defined() && out[1].parameters.defined());
  EXPECT_TRUE(torch::equal(out[0].parameters, out[1].parameters))
      << "largest difference " << (out[0].parameters - out[1].parameters).abs().max().item<float>();
}

// The same when the throw comes after every parameter's gradient (the last
// bucket ready): the step's "finished" must not have gone out to the others.
TEST(DdpRecovery, AThrowAfterEveryGradientSkipsTheStepEverywhere) {
  const auto out = train(5, [](int rank, int step) { return rank == 1 && step == 2 ? 3 : 0; });
  for (int rank = 0; rank < 2; ++rank)
    for (int step = 0; step < 5; ++step)
      if (step != 2) EXPECT_EQ(out[static_cast<std::size_t>(rank)].steps[static_cast<std::size_t>(step)], "ok");
  EXPECT_TRUE(contains(out[1].steps[2], "planted failure")) << out[1].steps[2];
  EXPECT_TRUE(contains(out[0].steps[2], "another rank failed")) << out[0].steps[2];
  ASSERT_TRUE(out[0].parameters.defined() && out[1].parameters.defined());
  EXPECT_TRUE(torch::equal(out[0].parameters, out[1].parameters))
      << "largest difference " << (out[0].parameters - out[1].parameters).abs().max().item<float>();
}

// Rank 0 joins after 2 steps; rank 1's backward throws in step 3, while rank 0
// shadows it: rank 1 skips that step, rank 0's join() goes on, both leave
// join() with the same parameters.
TEST(DdpRecovery, AThrowWhileAnotherRankHasJoinedSkipsOnlyThatStep) {
  const auto out = train(6, [](int rank, int step) { return rank == 1 && step == 3 ? 1 : 0; }, 2);
  ASSERT_EQ(out[0].steps.size(), 2u);
  ASSERT_EQ(out[1].steps.size(), 6u);
  for (int step = 0; step < 6; ++step) {
    if (step < 2) EXPECT_EQ(out[0].steps[static_cast<std::size_t>(step)], "ok") << "rank 0 step " << step;
    if (step != 3) EXPECT_EQ(out[1].steps[static_cast<std::size_t>(step)], "ok") << "rank 1 step " << step;
  }
  EXPECT_TRUE(contains(out[1].steps[3], "planted failure")) << out[1].steps[3];
  ASSERT_TRUE(out[0].parameters.defined() && out[1].parameters.defined());
  EXPECT_TRUE(torch::equal(out[0].parameters, out[1].parameters))
      << "largest difference " << (out[0].parameters - out[1].parameters).abs().max().item<float>();
}

TEST(DdpRecovery, RanksThatReduceDifferentBackwardPassesRaiseFromThenOn) {
  // Rank 1 runs one backward more (under no_sync) in step 2: its reducing
  // backward is its 4th, rank 0's its 3rd. Both must see it and refuse every
  // step from then on; neither steps alone.
  const auto out = train(6, [](int rank, int step) { return rank == 1 && step == 2 ? 2 : 0; });
  for (int rank = 0; rank < 2; ++rank)
    for (int step = 0; step < 6; ++step) {
      const std::string& s = out[static_cast<std::size_t>(rank)].steps[static_cast<std::size_t>(step)];
      if (step < 2) EXPECT_EQ(s, "ok") << "rank " << rank << " step " << step;
      else EXPECT_TRUE(contains(s, "different steps") || contains(s, "cannot reduce gradients any more"))
          << "rank " << rank << " step " << step << ": " << s;
    }
  EXPECT_TRUE(torch::equal(out[0].parameters, out[1].parameters));
}

}  // namespace
