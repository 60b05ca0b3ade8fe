// The torch layer (include/dagr/torch/), with ranks as threads: collectives
// on tensors of every supported dtype give what the span calls give; every
// other tensor is an InputError naming its dtype, device or layout; the data
// loader sampler hands out DistributedSampler's indices through
// torch::data::make_data_loader, a new epoch per pass; DDP accepts a module
// holder and a module itself.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "dagr/data/fashion_mnist.h"
#include "dagr/error.h"
#include "dagr/torch/collectives.h"
#include "dagr/torch/sampler.h"
#include "dagr/train/accuracy.h"
#include "dagr/train/ddp.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

// rank r's tensor: r + 1 + i/8 at position i (exact in every dtype here for small i).
torch::Tensor filled(torch::ScalarType type, int rank, std::int64_t n) {
  return (torch::arange(n, torch::kFloat64) / 8 + rank + 1).to(type);
}

class TensorCollectives : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(TensorCollectives, MatchTheSumAndGatherOverRanks) {
  const torch::ScalarType type = GetParam();
  const bool integral = !torch::isFloatingType(type);
  constexpr int kWorld = 3;
  constexpr std::int64_t n = 12;  // uint8: r + 1 + i/8 truncates to small integers; the sums stay < 256
  run_ranks(kWorld, [&](Communicator& comm) {
    auto t = filled(type, comm.rank(), n);
    allreduce(comm, t);
    auto expect = filled(type, 0, n).to(torch::kFloat64) * 0;
    for (int r = 0; r < kWorld; ++r) expect += filled(type, r, n).to(torch::kFloat64);
    EXPECT_TRUE(torch::equal(t.to(torch::kFloat64), expect)) << t;

    auto root = filled(type, comm.rank(), n);
    broadcast(comm, root, 2);
    EXPECT_TRUE(torch::equal(root, filled(type, 2, n)));

    auto all = torch::empty({kWorld * n}, torch::TensorOptions().dtype(type));
    allgather(comm, filled(type, comm.rank(), n), all);
    for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(torch::equal(all.narrow(0, r * n, n), filled(type, r, n)));

    auto mine = torch::empty({n / kWorld}, torch::TensorOptions().dtype(type));
    reduce_scatter(comm, filled(type, comm.rank(), n), mine);
    EXPECT_TRUE(torch::equal(mine.to(torch::kFloat64), expect.narrow(0, comm.rank() * (n / kWorld), n / kWorld)));

    auto async = filled(type, comm.rank(), n);
    allreduce_async(comm, async, integral ? ReduceOp::max : ReduceOp::sum).wait();
    EXPECT_TRUE(torch::equal(async.to(torch::kFloat64),
                             integral ? filled(type, kWorld - 1, n).to(torch::kFloat64) : expect));

    // rank 0 sends to 1, 1 to 2, ...
    auto got = torch::zeros({n}, torch::TensorOptions().dtype(type));
    if (comm.rank() + 1 < kWorld) send(comm, filled(type, comm.rank(), n), comm.rank() + 1);
    if (comm.rank() > 0) {
      recv(comm, got, comm.rank() - 1);
      EXPECT_TRUE(torch::equal(got, filled(type, comm.rank() - 1, n)));
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TensorCollectives,
                         ::testing::Values(torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16,
                                           torch::kInt32, torch::kInt64, torch::kUInt8));

// The InputError's message for `t`, or "" when there was none.
std::string refusal(const torch::Tensor& t) {
  Communicator single;
  try {
    allreduce(single, t);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(TensorChecks, RefuseWhatCannotMoveNamingIt) {
  EXPECT_NE(refusal(torch::zeros({4}, torch::kBool)).find("dtype Bool"), std::string::npos);
  EXPECT_NE(refusal(torch::zeros({2}, torch::kComplexFloat)).find("dtype ComplexFloat"), std::string::npos);
  const std::string strided = refusal(torch::zeros({4, 4}).t());
  EXPECT_NE(strided.find("not contiguous"), std::string::npos) << strided;
  const std::string sparse = refusal(torch::zeros({4, 4}).to_sparse());
  EXPECT_NE(sparse.find("layout Sparse"), std::string::npos) << sparse;
  EXPECT_NE(refusal(torch::zeros({4}, torch::TensorOptions().device(torch::kMeta))).find("device meta"),
            std::string::npos);
  EXPECT_NE(refusal(torch::Tensor()).find("undefined"), std::string::npos);
  EXPECT_EQ(refusal(torch::zeros({4})), "");

  Communicator single;
  EXPECT_THROW(span_of<double>(torch::zeros({3})), InputError);  // float32 as double
  EXPECT_THROW(allgather(single, torch::zeros({3}), torch::zeros({3}, torch::kFloat64)), InputError);
  EXPECT_EQ(span_of<float>(torch::zeros({3})).size(), 3u);
}

// Every index of the sampler's epochs through make_data_loader, per rank.
std::vector<std::vector<std::int64_t>> loader_epochs(const SamplerOptions& o, int epochs, std::size_t batch) {
  struct Indices : torch::data::datasets::Dataset<Indices, std::int64_t> {
    std::int64_t n;
    explicit Indices(std::int64_t size) : n(size) {}
    std::int64_t get(std::size_t i) override { return static_cast<std::int64_t>(i); }
    torch_compat::SizeOptional size() const override { return static_cast<std::size_t>(n); }
  };
  auto loader = torch::data::make_data_loader(Indices(o.dataset_size), DataLoaderSampler(o),
                                              torch::data::DataLoaderOptions(batch));
  std::vector<std::vector<std::int64_t>> seen;
  for (int e = 0; e < epochs; ++e) {
    seen.emplace_back();
    for (auto& examples : *loader) {
      EXPECT_LE(examples.size(), batch);
      seen.back().insert(seen.back().end(), examples.begin(), examples.end());
    }
  }
  return seen;
}

TEST(DataLoaderSampler, EachPassIsTheNextEpochOfDistributedSampler) {
  SamplerOptions o{.dataset_size = 23, .rank = 0, .world_size = 3, .seed = 7};
  std::set<std::int64_t> covered;
  for (int r = 0; r < 3; ++r) {
    o.rank = r;
    auto epochs = loader_epochs(o, 3, 4);
    DistributedSampler reference(o);
    for (int e = 0; e < 3; ++e) {
      reference.set_epoch(e);
      EXPECT_EQ(epochs[static_cast<std::size_t>(e)], reference.indices()) << "rank " << r << " epoch " << e;
      if (e == 1) covered.insert(epochs[1].begin(), epochs[1].end());
    }
    EXPECT_NE(epochs[0], epochs[1]);
  }
  EXPECT_EQ(covered.size(), 23u);

  // set_epoch before the loader takes its copy: its first pass is that epoch.
  o.rank = 1;
  DataLoaderSampler resumed(o);
  resumed.set_epoch(5);
  resumed.reset();
  DistributedSampler reference(o);
  reference.set_epoch(5);
  std::vector<std::int64_t> got;
  while (auto batch = resumed.next(10)) got.insert(got.end(), batch->begin(), batch->end());
  EXPECT_EQ(got, reference.indices());
  EXPECT_EQ(resumed.epoch(), 5);
}

TEST(DataLoaderSampler, SaveAndLoadKeepEpochAndPosition) {
  SamplerOptions o{.dataset_size = 40, .rank = 1, .world_size = 2, .seed = 3};
  DataLoaderSampler a(o), b(o);
  a.reset();
  a.reset();  // epoch 1
  a.next(4);
  torch::serialize::OutputArchive out;
  a.save(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  b.load(in);
  EXPECT_EQ(b.epoch(), 1);
  EXPECT_EQ(a.next(5), b.next(5));
}

struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  NetImpl() { fc = register_module("fc", torch::nn::Linear(4, 2)); }
  torch::Tensor forward(torch::Tensor x) { return fc(x); }
};
TORCH_MODULE(Net);

// A holder (shares ownership) and a plain module on the stack (borrowed): rank
// 0's weights reach every rank and the gradients are averaged.
TEST(DdpConstruction, FromAHolderAndFromAModule) {
  run_ranks(2, [](Communicator& comm) {
    Net holder;
    NetImpl plain;
    for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(holder.get()), static_cast<torch::nn::Module*>(&plain)}) {
      torch::NoGradGuard no_grad;
      for (auto& p : m->parameters()) p.fill_(comm.rank() + 1);
    }
    DistributedDataParallel from_holder(holder, comm);
    DistributedDataParallel from_module(plain, comm);
    EXPECT_EQ(&from_holder.module(), holder.get());
    EXPECT_EQ(&from_module.module(), &plain);
    for (auto& p : holder->parameters()) EXPECT_TRUE(torch::equal(p, torch::ones_like(p)));
    for (auto& p : plain.parameters()) EXPECT_TRUE(torch::equal(p, torch::ones_like(p)));
    auto x = torch::full({1, 4}, comm.rank() == 0 ? 1.0 : 3.0);
    plain.forward(x).sum().backward();
    EXPECT_TRUE(torch::equal(plain.fc->weight.grad(), torch::full({2, 4}, 2.0)));  // the mean of 1 and 3
  });
}

// The trainer keeps the images as bytes and normalises each batch; that must be
// what load_image_set gives, element for element.
TEST(FashionMnist, BytesNormalisedPerBatchEqualTheNormalisedSet) {
  const data::ImageSet bytes = data::load_image_bytes(data::kFashionMnistDir, "t10k");
  const data::ImageSet set = data::load_image_set(data::kFashionMnistDir, "t10k");
  ASSERT_EQ(bytes.images.scalar_type(), torch::kUInt8);
  ASSERT_EQ(bytes.images.sizes(), set.images.sizes());
  EXPECT_TRUE(torch::equal(bytes.labels, set.labels));
  const auto idx = torch::tensor({7, 0, 9999, 4242}, torch::kInt64);
  EXPECT_TRUE(torch::equal(data::normalize_images(bytes.images.index_select(0, idx)), set.images.index_select(0, idx)));
  EXPECT_TRUE(torch::equal(data::normalize_images(bytes.images), set.images));
  // A batch's rows straight from the set: the same bits, for a batch of 64 and
  // for rows whose length is no multiple of the vector width (7 × 5 bytes).
  const auto rows = torch::randint(0, 10000, {64}, torch::kInt64);
  EXPECT_TRUE(torch::equal(data::normalize_images(bytes.images, rows), set.images.index_select(0, rows)));
  EXPECT_TRUE(torch::equal(data::normalize_images(bytes.images, idx), set.images.index_select(0, idx)));
  const auto odd = bytes.images.narrow(0, 0, 20).reshape({20, 784}).narrow(1, 0, 35).reshape({20, 7, 5});
  const auto some = torch::tensor({19, 3, 3, 0}, torch::kInt64);
  EXPECT_TRUE(torch::equal(data::normalize_images(odd, some), data::normalize_images(odd.index_select(0, some))));
  EXPECT_EQ(data::normalize_images(odd, torch::zeros({0}, torch::kInt64)).sizes(), (std::vector<std::int64_t>{0, 7, 5}));
  EXPECT_THROW(data::normalize_images(odd, torch::tensor({20}, torch::kInt64)), InputError);
  EXPECT_THROW(data::normalize_images(odd, torch::tensor({-1}, torch::kInt64)), InputError);
  EXPECT_THROW(data::normalize_images(odd, torch::tensor({1}, torch::kInt32)), InputError);
  // Every byte value and a batch, bit for bit the tensor operations that define
  // the normalisation (the mean and std of Fashion-MNIST's training images).
  const auto all = torch::arange(256, torch::kInt32).to(torch::kUInt8).reshape({1, 1, 16, 16});
  auto defined = [](const torch::Tensor& b) { return b.to(torch::kFloat32).div_(255.0f).sub_(0.2860f).div_(0.3530f); };
  EXPECT_TRUE(torch::equal(data::normalize_images(all), defined(all)));
  const auto batch = bytes.images.narrow(0, 100, 64);
  EXPECT_TRUE(torch::equal(data::normalize_images(batch), defined(batch)));
  EXPECT_THROW(data::normalize_images(torch::zeros({2, 2})), InputError);
}

// The training metrics' count of correct predictions is argmax, eq and sum,
// ties and NaNs included, for float32 and float64 logits.
TEST(Accuracy, CorrectPredictionsAreArgmaxEqSum) {
  torch::manual_seed(3);
  for (const auto type : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    // Few distinct values, so that rows have ties; some NaNs.
    torch::Tensor logits = torch::randint(0, 4, {500, 10}).to(type);
    logits.index_put_({torch::randint(0, 500, {40}), torch::randint(0, 10, {40})}, NAN);
    const torch::Tensor labels = torch::randint(0, 10, {500}, torch::kInt64);
    EXPECT_EQ(correct_predictions(logits, labels), logits.argmax(1).eq(labels).sum().item<std::int64_t>()) << type;
    const torch::Tensor rows = logits.t().contiguous().t();  // not contiguous
    EXPECT_EQ(correct_predictions(rows, labels), logits.argmax(1).eq(labels).sum().item<std::int64_t>()) << type;
  }
  EXPECT_EQ(correct_predictions(torch::zeros({0, 10}), torch::zeros({0}, torch::kInt64)), 0);
  EXPECT_THROW(correct_predictions(torch::zeros({3, 10}), torch::zeros({2}, torch::kInt64)), InputError);
}

}  // namespace
}  // namespace dagr

