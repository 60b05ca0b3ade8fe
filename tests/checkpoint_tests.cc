// Training-state checkpoints: what goes in comes out (model, optimizer state,
// progress); only the two newest are kept; a torn or corrupted file is skipped
// with a warning and the one before is used.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "dagr/error.h"
#include "dagr/train/checkpoint.h"

namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("dagr-ckpt-" + std::to_string(getpid()) + "-" +
                                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};

torch::nn::Sequential model() {
  return torch::nn::Sequential(torch::nn::Linear(6, 5), torch::nn::BatchNorm1d(5), torch::nn::Linear(5, 3));
}

// A few Adam or SGD steps on fixed data.
void train(torch::nn::Sequential& m, torch::optim::Optimizer& optimizer, int steps) {
  for (int i = 0; i < steps; ++i) {
    optimizer.zero_grad();
    const auto x = torch::sin(torch::arange(8 * 6, torch::kFloat32) * 0.1f * static_cast<float>(i + 1)).reshape({8, 6});
    m->forward(x).pow(2).mean().backward();
    optimizer.step();
  }
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

template <class Optimizer, class Options>
void resumes_bitwise(Options options) {
  TempDir dir;
  torch::manual_seed(3);
  auto a = model();
  Optimizer opt_a(a->parameters(), options);
  train(a, opt_a, 3);
  dagr::TrainingCheckpoint c;
  c.epoch = 2;
  c.samples_in_epoch = 640;
  c.steps = 3;
  c.sampler_seed = 9;
  c.metrics = {"{\"epoch\":1}"};
  c.extra = "extra";
  c.rng_state = torch::globalContext().defaultGenerator(torch::kCPU).get_state();
  c.model = dagr::module_state(*a);
  c.optimizer = dagr::optimizer_state(opt_a, a->named_parameters());
  dagr::write_checkpoint(dir.path, c);

  torch::manual_seed(4);  // another start: everything must come from the checkpoint
  auto b = model();
  Optimizer opt_b(b->parameters(), options);
  const auto read = dagr::read_latest_checkpoint(dir.path);
  ASSERT_TRUE(read);
  EXPECT_EQ(read->epoch, 2);
  EXPECT_EQ(read->samples_in_epoch, 640);
  EXPECT_EQ(read->steps, 3);
  EXPECT_EQ(read->sampler_seed, 9u);
  EXPECT_EQ(read->metrics, c.metrics);
  EXPECT_EQ(read->extra, "extra");
  EXPECT_TRUE(torch::equal(read->rng_state, c.rng_state));
  dagr::load_module_state(*b, read->model);
  dagr::load_optimizer_state(opt_b, b->named_parameters(), read->optimizer);
  train(a, opt_a, 2);
  train(b, opt_b, 2);
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& item : pa) EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  const auto ba = a->named_buffers(), bb = b->named_buffers();
  for (const auto& item : ba) EXPECT_TRUE(torch::equal(item.value(), bb[item.key()])) << item.key();
}

TEST(Checkpoint, AdamContinuesBitwiseFromACheckpoint) { resumes_bitwise<torch::optim::Adam>(torch::optim::AdamOptions(1e-2)); }

TEST(Checkpoint, SgdWithMomentumContinuesBitwiseFromACheckpoint) {
  resumes_bitwise<torch::optim::SGD>(torch::optim::SGDOptions(0.1).momentum(0.9));
}

dagr::TrainingCheckpoint at(std::int64_t epoch, std::int64_t samples) {
  dagr::TrainingCheckpoint c;
  c.epoch = epoch;
  c.samples_in_epoch = samples;
  c.model["w"] = torch::full({1000}, static_cast<float>(epoch * 100000 + samples));
  return c;
}

TEST(Checkpoint, KeepsTheTwoNewestAndNoTemporaryFile) {
  TempDir dir;
  for (std::int64_t s : {64, 128, 192}) dagr::write_checkpoint(dir.path, at(1, s));
  const std::string last = dagr::write_checkpoint(dir.path, at(2, 0));
  const auto files = files_in(dir.path);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].filename(), "checkpoint-000001-000000000192.dagr");
  EXPECT_EQ(files[1].string(), last);
  EXPECT_EQ(dagr::read_latest_checkpoint(dir.path)->epoch, 2);
}

void expect_falls_back(const std::function<void(const fs::path&)>& damage, const std::string& why) {
  TempDir dir;
  dagr::write_checkpoint(dir.path, at(1, 64));
  const fs::path newest = dagr::write_checkpoint(dir.path, at(1, 128));
  damage(newest);
  ::testing::internal::CaptureStderr();
  const auto read = dagr::read_latest_checkpoint(dir.path);
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(read);
  EXPECT_EQ(read->samples_in_epoch, 64);
  EXPECT_NE(err.find(newest.string()), std::string::npos) << err;
  EXPECT_NE(err.find(why), std::string::npos) << err;
}

TEST(Checkpoint, ATornFileIsSkippedWithAWarningNamingIt) {
  expect_falls_back([](const fs::path& p) { fs::resize_file(p, fs::file_size(p) / 2); }, "torn");
}

TEST(Checkpoint, AFlippedByteIsSkippedWithAWarningNamingIt) {
  expect_falls_back(
      [](const fs::path& p) {
        std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(fs::file_size(p) - 100));
        char c;
        f.read(&c, 1);
        f.seekp(static_cast<std::streamoff>(fs::file_size(p) - 100));
        c = static_cast<char>(c ^ 0x10);
        f.write(&c, 1);
      },
      "checksum");
}

// A resumed run goes back past an unreadable newest checkpoint; its next
// checkpoint, named before that one, must not count it among the two kept (it
// pushed the last good one out, leaving one good checkpoint and a torn one).
TEST(Checkpoint, ACheckpointLeftAheadOfAResumedRunIsRemovedNotKept) {
  TempDir dir;
  dagr::write_checkpoint(dir.path, at(1, 100));
  dagr::write_checkpoint(dir.path, at(1, 200));
  const std::string torn = dagr::write_checkpoint(dir.path, at(1, 300));
  fs::resize_file(torn, fs::file_size(torn) - 10);
  ::testing::internal::CaptureStderr();
  const auto resumed = dagr::read_latest_checkpoint(dir.path);
  ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(resumed);
  EXPECT_EQ(resumed->samples_in_epoch, 200);
  const std::string next = dagr::write_checkpoint(dir.path, at(1, 250));  // the resumed run's next one
  const auto files = files_in(dir.path);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].filename(), "checkpoint-000001-000000000200.dagr");
  EXPECT_EQ(files[1].string(), next);
  EXPECT_EQ(dagr::read_latest_checkpoint(dir.path)->samples_in_epoch, 250);
}

TEST(Checkpoint, AFolderNamedLikeACheckpointIsPassedOver) {
  TempDir dir;
  dagr::write_checkpoint(dir.path, at(1, 64));
  fs::create_directory(fs::path(dir.path) / "checkpoint-000009-000000000000.dagr");  // sorts last
  EXPECT_EQ(dagr::read_latest_checkpoint(dir.path)->samples_in_epoch, 64);
  dagr::write_checkpoint(dir.path, at(1, 128));
  dagr::write_checkpoint(dir.path, at(1, 192));
  EXPECT_TRUE(fs::is_directory(fs::path(dir.path) / "checkpoint-000009-000000000000.dagr"));
  EXPECT_EQ(dagr::read_latest_checkpoint(dir.path)->samples_in_epoch, 192);
}

TEST(Checkpoint, NoneWhenTheFolderHasNone) {
  TempDir dir;
  EXPECT_FALSE(dagr::read_latest_checkpoint(dir.path));
  EXPECT_FALSE(dagr::read_latest_checkpoint((dir.path / "missing").string()));
}

TEST(Checkpoint, AModelOfAnotherShapeIsAnInputError) {
  TempDir dir;
  auto a = model();
  dagr::TrainingCheckpoint c;
  c.model = dagr::module_state(*a);
  dagr::write_checkpoint(dir.path, c);
  auto other = torch::nn::Sequential(torch::nn::Linear(6, 4));
  EXPECT_THROW(dagr::load_module_state(*other, dagr::read_latest_checkpoint(dir.path)->model), dagr::InputError);
}

// Another optimizer's state would be dropped: Adam's moments by SGD, SGD's
// momentum buffers by Adam. A state with nothing per element loads anywhere.
TEST(Checkpoint, AnotherOptimizersStateIsAnInputErrorNamingBoth) {
  torch::manual_seed(3);
  auto a = model();
  torch::optim::Adam adam(a->parameters(), torch::optim::AdamOptions(1e-2));
  torch::optim::SGD momentum(a->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD plain(a->parameters(), torch::optim::SGDOptions(0.1));
  train(a, adam, 1);
  train(a, momentum, 1);
  train(a, plain, 1);
  const auto named = a->named_parameters();
  const auto adams = dagr::optimizer_state(adam, named), momentums = dagr::optimizer_state(momentum, named),
             plains = dagr::optimizer_state(plain, named);
  auto message = [&](torch::optim::Optimizer& into, const std::map<std::string, torch::Tensor>& state) {
    try {
      dagr::load_optimizer_state(into, named, state);
    } catch (const dagr::InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string sgd_from_adam = message(plain, adams), adam_from_sgd = message(adam, momentums);
  EXPECT_NE(sgd_from_adam.find("holds Adam's optimizer state and this run's optimizer is SGD"), std::string::npos)
      << sgd_from_adam;
  EXPECT_NE(adam_from_sgd.find("holds SGD's optimizer state and this run's optimizer is Adam"), std::string::npos)
      << adam_from_sgd;
  EXPECT_EQ(message(adam, plains), "no error");
  EXPECT_EQ(message(plain, plains), "no error");
  EXPECT_EQ(message(momentum, momentums), "no error");
}

}  // namespace
