// The IDX reader against files made here (good, gzipped, truncated, wrong
// magic, wrong size, missing, a header that claims far more than the file
// holds), the plain copies kept of gzipped files, the DistributedSampler's guarantees and the BatchBalancer's split.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "dagr/data/idx.h"
#include "dagr/data/idx_cache.h"
#include "dagr/error.h"
#include "dagr/train/batch_balancer.h"
#include "dagr/train/sampler.h"

namespace dagr {
namespace {

namespace fs = std::filesystem;

std::vector<std::uint8_t> idx_bytes(std::vector<std::uint32_t> dims, std::size_t data_bytes, std::uint8_t type = 0x08) {
  std::vector<std::uint8_t> b{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (auto d : dims)
    for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<std::uint8_t>(d >> shift));
  for (std::size_t i = 0; i < data_bytes; ++i) b.push_back(static_cast<std::uint8_t>(i * 7));
  return b;
}

class Idx : public ::testing::Test {
 protected:
  fs::path dir = fs::temp_directory_path() / ("dagr-idx-" + std::to_string(getpid()));
  void SetUp() override { fs::create_directories(dir); }
  void TearDown() override { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::vector<std::uint8_t>& bytes, bool gzip = false) {
    const std::string path = (dir / name).string();
    if (gzip) {
      gzFile f = gzopen(path.c_str(), "wb");
      gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
      gzclose(f);
    } else {
      std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    return path;
  }
  void expect_error(const std::string& path, const std::string& words) {
    try {
      data::read_idx(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const InputError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(path), std::string::npos) << m;
      EXPECT_NE(m.find(words), std::string::npos) << m;
    }
  }
};

TEST_F(Idx, ReadsPlainAndGzippedFiles) {
  for (bool gz : {false, true}) {
    const auto a = data::read_idx(write(gz ? "a.gz" : "a", idx_bytes({3, 2, 5}, 30), gz));
    EXPECT_EQ(a.dims, (std::vector<std::int64_t>{3, 2, 5}));
    ASSERT_EQ(a.data.size(), 30u);
    EXPECT_EQ(a.data[29], static_cast<std::uint8_t>(29 * 7));
  }
}

TEST_F(Idx, RejectsBadFilesNamingThemAndTheProblem) {
  expect_error((dir / "missing").string(), "cannot open");
  expect_error(write("truncated", idx_bytes({10, 4}, 39)), "truncated");
  expect_error(write("truncated.gz", idx_bytes({10, 4}, 12), true), "truncated");
  expect_error(write("header", {0, 0, 8}), "too short");
  auto bad_magic = idx_bytes({4}, 4);
  bad_magic[0] = 0x1f;
  expect_error(write("magic", bad_magic), "wrong magic");
  expect_error(write("type", idx_bytes({4}, 4, 0x0d)), "not unsigned byte");
  expect_error(write("long", idx_bytes({4}, 5)), "wrong size");
}

// Runs read_idx(path) in a forked child whose address space may grow by at
// most `limit` bytes, and waits at most `deadline` for it. Returns what the
// child reported: "InputError: <message>", or the other exception it caught,
// or why it did not finish.
std::string read_idx_bounded(const std::string& path, std::size_t limit, std::chrono::seconds deadline) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    close(pipe_fds[0]);
    std::string report;
    std::size_t pages = 0;  // this process's current size, from /proc/self/statm
    if (FILE* f = fopen("/proc/self/statm", "r")) {
      if (fscanf(f, "%zu", &pages) != 1) pages = 0;
      fclose(f);
    }
    const rlim_t cap = pages * static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) + limit;
    const rlimit rl{cap, cap};
    if (pages == 0 || setrlimit(RLIMIT_AS, &rl) != 0) {
      report = "could not limit the address space";
    } else {
      try {
        data::read_idx(path);
        report = "no error";
      } catch (const InputError& e) {
        report = std::string("InputError: ") + e.what();
      } catch (const std::bad_alloc&) {
        report = "std::bad_alloc";
      } catch (const std::exception& e) {
        report = std::string("other exception: ") + e.what();
      }
    }
    if (write(pipe_fds[1], report.data(), report.size()) < 0) _exit(2);
    _exit(0);
  }
  close(pipe_fds[1]);
  const auto until = std::chrono::steady_clock::now() + deadline;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(pipe_fds[0]);
      return "timed out";
    }
    usleep(10'000);
  }
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buf, sizeof buf)) > 0;) report.append(buf, static_cast<std::size_t>(n));
  close(pipe_fds[0]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) report += " (child did not exit cleanly)";
  return report;
}

// A 701-byte file whose header claims 4 000 000 images of 28x28 (3.1 GB), and
// one whose header claims the most the reader accepts (2^34 bytes): each is an
// InputError naming the file and both sizes, in well under a second, while
// the reader's address space may grow by only 64 MiB.
TEST_F(Idx, AHugeClaimInATinyFileIsAnInputErrorWithBoundedMemory) {
  const std::size_t body = 701 - 16;
  const std::size_t limit = std::size_t{64} << 20;
  struct Claim {
    std::vector<std::uint32_t> dims;
    std::string total;
  };
  for (const Claim& claim : {Claim{{4'000'000, 28, 28}, "3136000000"}, Claim{{1u << 16, 1u << 18}, "17179869184"}}) {
    for (bool gz : {false, true}) {
      const auto bytes = idx_bytes(claim.dims, body);
      const std::string path = write(claim.total + (gz ? ".gz" : ""), bytes, gz);
      SCOPED_TRACE(path);
      if (!gz) {
        ASSERT_EQ(fs::file_size(path), claim.dims.size() == 3 ? 701u : 697u);
      }
      const auto start = std::chrono::steady_clock::now();
      const std::string report = read_idx_bounded(path, limit, std::chrono::seconds(20));
      EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
      ASSERT_EQ(report.rfind("InputError: ", 0), 0u) << report;
      EXPECT_NE(report.find(path), std::string::npos) << report;
      EXPECT_NE(report.find("truncated"), std::string::npos) << report;
      EXPECT_NE(report.find(claim.total), std::string::npos) << report;  // what the header claims
      const std::string holds = "holds " + std::to_string(bytes.size() - 4 - 4 * claim.dims.size());
      EXPECT_NE(report.find(holds), std::string::npos) << report;  // what the file holds
    }
  }
}

// The bound above is the reader's, not the test's: a real file of a few MiB,
// plain and gzipped, is read under the same limit.
TEST_F(Idx, AFileThatHoldsItsClaimIsReadUnderTheSameLimit) {
  for (bool gz : {false, true}) {
    const std::string path = write(gz ? "real.gz" : "real", idx_bytes({3000, 28, 28}, 3000 * 28 * 28), gz);
    EXPECT_EQ(read_idx_bounded(path, std::size_t{64} << 20, std::chrono::seconds(20)), "no error") << path;
  }
}

// DAGR_CACHE_DIR for one test, restored (or unset) after it.
class CacheDir {
 public:
  explicit CacheDir(const std::string& dir) {
    if (const char* v = std::getenv("DAGR_CACHE_DIR")) old_ = v;
    setenv("DAGR_CACHE_DIR", dir.c_str(), 1);
  }
  ~CacheDir() { old_ ? setenv("DAGR_CACHE_DIR", old_->c_str(), 1) : unsetenv("DAGR_CACHE_DIR"); }

 private:
  std::optional<std::string> old_;
};

TEST_F(Idx, KeepsAPlainCopyOfAGzippedFileAndReadsItTheNextTime) {
  const CacheDir cache((dir / "cache").string());
  const std::string gz = write("c.gz", idx_bytes({4, 3}, 12), true);
  const std::string copy = data::idx_cache_path(gz);
  ASSERT_NE(copy, "");
  EXPECT_EQ(fs::path(copy).parent_path(), dir / "cache");
  EXPECT_FALSE(fs::exists(copy));
  const auto first = data::read_idx_cached(gz);
  EXPECT_EQ(first.dims, (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(first.data, data::read_idx(gz).data);
  ASSERT_TRUE(fs::exists(copy));
  EXPECT_EQ(fs::file_size(copy), 4u + 2 * 4 + 12);  // plain IDX: magic, two dimensions, the bytes
  EXPECT_EQ(data::read_idx(copy).data, first.data);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "cache"), fs::directory_iterator()), 1);  // no temporary left

  // The next read takes the copy: a byte changed in it shows.
  auto changed = idx_bytes({4, 3}, 12);
  changed.back() = 200;
  std::ofstream(copy, std::ios::binary).write(reinterpret_cast<const char*>(changed.data()), changed.size());
  EXPECT_EQ(data::read_idx_cached(gz).data.back(), 200);

  // A changed source gets a copy of its own.
  write("c.gz", idx_bytes({2, 3}, 6), true);
  fs::last_write_time(gz, fs::last_write_time(gz) + std::chrono::seconds(5));
  EXPECT_NE(data::idx_cache_path(gz), copy);
  EXPECT_EQ(data::read_idx_cached(gz).dims, (std::vector<std::int64_t>{2, 3}));
  EXPECT_TRUE(fs::exists(data::idx_cache_path(gz)));
}

TEST_F(Idx, ABrokenCopyIsWrittenAgainAndABadSourceIsNeverCopied) {
  const CacheDir cache((dir / "cache").string());
  const std::string gz = write("d.gz", idx_bytes({5, 2}, 10), true);
  const auto good = data::read_idx_cached(gz);
  const std::string copy = data::idx_cache_path(gz);
  fs::resize_file(copy, 9);  // cut short: fails read_idx's checks
  EXPECT_EQ(data::read_idx_cached(gz).data, good.data);
  EXPECT_EQ(fs::file_size(copy), 4u + 2 * 4 + 10);

  // A gzipped file that fails is an error naming it, as without the cache, and leaves no copy.
  const std::string bad = write("bad.gz", idx_bytes({10, 4}, 12), true);
  try {
    data::read_idx_cached(bad);
    ADD_FAILURE() << "no error for " << bad;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(data::idx_cache_path(bad)));

  // Plain files are read as they are; nothing is copied.
  EXPECT_EQ(data::idx_cache_path(write("plain", idx_bytes({3}, 3))), "");
}

TEST_F(Idx, NoCacheFolderOnlyMeansNoCopy) {
  const std::string gz = write("e.gz", idx_bytes({3, 3}, 9), true);
  {
    const CacheDir off("");
    EXPECT_EQ(data::idx_cache_path(gz), "");
    EXPECT_EQ(data::read_idx_cached(gz).data.size(), 9u);
  }
  write("file", {1});
  const CacheDir unwritable((dir / "file" / "cache").string());  // under a regular file: cannot be made
  EXPECT_NE(data::idx_cache_path(gz), "");
  EXPECT_EQ(data::read_idx_cached(gz).data.size(), 9u);
  EXPECT_FALSE(fs::exists(data::idx_cache_path(gz)));
}

TEST(Sampler, RanksTakeEqualStepsAndTogetherCoverTheDataSet) {
  for (bool drop_last : {false, true}) {
    const std::int64_t n = 103;
    const int world = 4;
    std::multiset<std::int64_t> seen;
    std::int64_t per_rank = -1;
    for (int r = 0; r < world; ++r) {
      DistributedSampler s({.dataset_size = n, .rank = r, .world_size = world, .seed = 5, .drop_last = drop_last});
      s.set_epoch(3);
      if (per_rank >= 0) {
        EXPECT_EQ(s.samples_per_rank(), per_rank);
      }
      per_rank = s.samples_per_rank();
      EXPECT_EQ(static_cast<std::int64_t>(s.indices().size()), per_rank);
      seen.insert(s.indices().begin(), s.indices().end());
    }
    EXPECT_EQ(per_rank, drop_last ? 25 : 26);
    std::set<std::int64_t> distinct(seen.begin(), seen.end());
    EXPECT_EQ(static_cast<std::int64_t>(distinct.size()), drop_last ? 100 : n);
    EXPECT_EQ(static_cast<std::int64_t>(seen.size()), world * per_rank);  // padding repeats 1 index
  }
}

// Padding, as PyTorch's DistributedSampler pads: the epoch's order is extended
// with its own first indices, wrapping round as often as needed. The ranks'
// lists interleave back into that order (rank r's j-th index is position
// j·world + r), so every padded position can be checked against the position
// it copies.
TEST(Sampler, PadsSeveralSamplesByWrappingFromTheStartOfTheEpochOrder) {
  struct Shape {
    std::int64_t n;
    int world;
  };
  for (const Shape shape : {Shape{10, 4}, Shape{13, 8}, Shape{3, 8}, Shape{22, 5}})
    for (bool shuffle : {false, true}) {
      SCOPED_TRACE(::testing::Message() << shape.n << " samples, " << shape.world << " ranks, shuffle " << shuffle);
      std::vector<std::vector<std::int64_t>> lists;
      for (int r = 0; r < shape.world; ++r) {
        DistributedSampler s({.dataset_size = shape.n, .rank = r, .world_size = shape.world, .seed = 4, .shuffle = shuffle});
        s.set_epoch(1);
        lists.push_back(s.indices());
      }
      const std::size_t per_rank = lists[0].size();
      ASSERT_EQ(per_rank, static_cast<std::size_t>((shape.n + shape.world - 1) / shape.world));
      std::vector<std::int64_t> order(per_rank * shape.world);
      for (int r = 0; r < shape.world; ++r) {
        ASSERT_EQ(lists[r].size(), per_rank);
        for (std::size_t j = 0; j < per_rank; ++j) order[j * shape.world + r] = lists[r][j];
      }
      ASSERT_GT(order.size() - shape.n, 1u);  // several padded samples
      std::vector<std::int64_t> head(order.begin(), order.begin() + shape.n);
      std::sort(head.begin(), head.end());
      for (std::int64_t i = 0; i < shape.n; ++i) ASSERT_EQ(head[i], i);  // the epoch: a permutation
      if (!shuffle) {
        for (std::int64_t i = 0; i < shape.n; ++i) EXPECT_EQ(order[i], i);
      }
      for (std::size_t k = shape.n; k < order.size(); ++k)
        EXPECT_EQ(order[k], order[k % shape.n]) << "padded position " << k;
    }
  // PyTorch's DistributedSampler(shuffle=False) on 10 samples and 4 ranks.
  DistributedSampler last({.dataset_size = 10, .rank = 3, .world_size = 4, .shuffle = false});
  EXPECT_EQ(last.indices(), (std::vector<std::int64_t>{3, 7, 1}));
}

TEST(Sampler, ShufflesPerEpochDeterministicallyAndResumesAtAStep) {
  DistributedSampler a({.dataset_size = 1000, .rank = 1, .world_size = 3, .seed = 9});
  DistributedSampler b({.dataset_size = 1000, .rank = 1, .world_size = 3, .seed = 9});
  a.set_epoch(2);
  b.set_epoch(2);
  EXPECT_EQ(a.indices(), b.indices());
  const auto epoch2 = a.indices();
  a.set_epoch(3);
  EXPECT_NE(a.indices(), epoch2);
  EXPECT_EQ(a.steps_per_epoch(64), 6);  // 334 samples
  const auto step4 = b.batch(4, 64);
  EXPECT_EQ(step4, std::vector<std::int64_t>(epoch2.begin() + 256, epoch2.begin() + 320));
  EXPECT_EQ(b.batch(5, 64).size(), 334u - 320u);
  EXPECT_THROW(b.batch(6, 64), InputError);
}

TEST(Sampler, StepsOfAllRanksMakeTheSingleProcessBatch) {
  const int world = 3, b = 8;
  DistributedSampler one({.dataset_size = 240, .rank = 0, .world_size = 1, .seed = 1});
  for (int step = 0; step < 10; ++step) {
    std::set<std::int64_t> ranks_union;
    for (int r = 0; r < world; ++r) {
      DistributedSampler s({.dataset_size = 240, .rank = r, .world_size = world, .seed = 1});
      for (auto i : s.batch(step, b)) ranks_union.insert(i);
    }
    const auto whole = one.batch(step, world * b);
    EXPECT_EQ(ranks_union, std::set<std::int64_t>(whole.begin(), whole.end()));
  }
}

// The epoch's order for all ranks holds each rank's indices at its stride:
// a step's window of the order is the equal split's samples of that step.
TEST(Sampler, EpochOrderHoldsEveryRanksIndicesAtItsStride) {
  for (const std::int64_t n : {240, 241, 7}) {
    const int world = 3;
    for (int r = 0; r < world; ++r) {
      DistributedSampler s({.dataset_size = n, .rank = r, .world_size = world, .seed = 4});
      s.set_epoch(1);
      ASSERT_EQ(static_cast<std::int64_t>(s.epoch_order().size()), s.samples_per_rank() * world);
      for (std::size_t i = 0; i < s.indices().size(); ++i)
        EXPECT_EQ(s.indices()[i], s.epoch_order()[i * world + static_cast<std::size_t>(r)]) << "n " << n << " rank " << r;
    }
  }
}

// Every rank's slice, for every window: contiguous, in rank order, each at
// least one sample, together exactly the window.
void expect_slices_tile(const BatchBalancer& b, int world) {
  for (std::int64_t window = world; window <= 300; ++window) {
    std::int64_t next = 0;
    for (int r = 0; r < world; ++r) {
      const BatchBalancer::Slice s = b.slice(r, window);
      EXPECT_EQ(s.begin, next) << "rank " << r << " window " << window;
      EXPECT_GE(s.count, 1) << "rank " << r << " window " << window;
      next = s.begin + s.count;
    }
    EXPECT_EQ(next, window);
  }
}

TEST(BatchBalancer, StartsEqualAndTilesEveryWindow) {
  BatchBalancer b(2);
  EXPECT_EQ(b.slice(0, 128).begin, 0);
  EXPECT_EQ(b.slice(0, 128).count, 64);
  EXPECT_EQ(b.slice(1, 128).begin, 64);
  EXPECT_EQ(b.slice(1, 128).count, 64);
  EXPECT_DOUBLE_EQ(BatchBalancer::loss_weight(64, 128, 2), 1.0);
  expect_slices_tile(b, 2);
  BatchBalancer three(3);
  expect_slices_tile(three, 3);
  EXPECT_THROW(three.slice(0, 2), InputError);
  EXPECT_THROW(three.slice(3, 30), InputError);
}

// The model: costs per sample of 1, 2 and 4 units give 4:2:1; a fixed part
// weighs against the step's samples (rank 0 spends 0.5 ms a step on its own,
// so of 128 samples at 10 µs each it takes (0.89 − 0.5) / 0.01 = 39, rank 1
// 89: both steps 0.89 ms); however slow a rank, its share is raised to a
// quarter of the equal one before all are scaled to sum to 1; a rank without
// a positive cost per sample gives no split.
TEST(BatchBalancer, ModelGivesEachRankTheSamplesThatEqualiseTheSteps) {
  const auto split = BatchBalancer::model_split(std::vector<double>{0, 1e-5, 0, 2e-5, 0, 4e-5}, 120);
  ASSERT_EQ(split.size(), 3u);
  EXPECT_NEAR(split[0], 4 / 7.0, 1e-12);
  EXPECT_NEAR(split[1], 2 / 7.0, 1e-12);
  EXPECT_NEAR(split[2], 1 / 7.0, 1e-12);
  const auto fixed = BatchBalancer::model_split(std::vector<double>{5e-4, 1e-5, 0, 1e-5}, 128);
  EXPECT_NEAR(fixed[0] * 128, 39, 1e-9);
  EXPECT_NEAR(fixed[1] * 128, 89, 1e-9);
  EXPECT_NEAR(BatchBalancer::model_split(std::vector<double>{0, 1e-6, 0, 1.0}, 128)[1], 0.125 / 1.125, 1e-6);
  EXPECT_TRUE(BatchBalancer::model_split(std::vector<double>{0, 1e-6, 0, 0}, 128).empty());
  EXPECT_TRUE(BatchBalancer::model_split(std::vector<double>{0, std::nan(""), 0, 1e-6}, 128).empty());
}

// One measurement period of rank 0 (steps of `step_s`, window 128) to its
// end, then rank 0's decision, adopted; returns it.
std::vector<double> period(BatchBalancer& b, double step_s, std::span<const double> costs) {
  for (int i = 0; i < 100000 && !b.due(); ++i) b.record(64, 128, step_s / 2, 0, step_s);
  EXPECT_TRUE(b.due());
  b.measurement();
  std::vector<double> decision = b.decide(costs, 128);
  b.adopt(decision);
  return decision;
}

// Rank 1 costs twice as much per sample: the first period only sizes the
// next; then each period a trial moves rank 0's share 0.05 towards the
// model's 2/3, and is kept while the steps get faster.
TEST(BatchBalancer, TriesStepsTowardsTheModelAndKeepsTheFasterOnes) {
  BatchBalancer b(2);
  const std::vector<double> costs{0, 1e-5, 0, 2e-5};
  for (int i = 0; i < BatchBalancer::kSkipped; ++i) b.record(64, 128, 1, 1, 1);  // warm-up: left out
  double step_s = 2e-3;
  const std::vector<std::array<double, 2>> expected{{0.5, 0.5}, {0.55, 0.5}, {0.6, 0.55}, {0.65, 0.6}, {2 / 3.0, 0.65}};
  for (const auto& [trying, kept] : expected) {
    period(b, step_s, costs);
    EXPECT_NEAR(b.shares()[0], trying, 1e-9);
    EXPECT_NEAR(b.kept_shares()[0], kept, 1e-9);  // a trial is not kept before it is judged
    step_s *= 0.95;  // each trial faster
  }
  EXPECT_EQ(b.trials(), 4);
  EXPECT_EQ(b.undone(), 0);
  period(b, step_s, costs);  // at the model's split: kept, no further trial
  EXPECT_EQ(b.trials(), 4);
  EXPECT_NEAR(b.kept_shares()[0], 2 / 3.0, 1e-9);
  EXPECT_EQ(b.slice(0, 120).count, 80);
  expect_slices_tile(b, 2);
}

// With 3 ranks the shares move along the line to the model's split (3:1:1
// here), the largest move 0.05, and still sum to 1.
TEST(BatchBalancer, MovesAllSharesAlongTheLineToTheModelsSplit) {
  BatchBalancer b(3);
  const std::vector<double> costs{0, 1e-5, 0, 3e-5, 0, 3e-5};
  for (int i = 0; i < BatchBalancer::kSkipped; ++i) b.record(64, 192, 1, 1, 1);
  period(b, 1e-3, costs);  // sizing
  period(b, 1e-3, costs);
  const double t = 0.05 / (0.6 - 1 / 3.0);
  EXPECT_NEAR(b.shares()[0], 1 / 3.0 + t * (0.6 - 1 / 3.0), 1e-12);
  EXPECT_NEAR(b.shares()[1], 1 / 3.0 + t * (0.2 - 1 / 3.0), 1e-12);
  EXPECT_NEAR(b.shares()[0] + b.shares()[1] + b.shares()[2], 1.0, 1e-12);
  for (int i = 0; i < 10; ++i) period(b, 1e-3, costs);  // never slower: on to the model's split
  EXPECT_NEAR(b.shares()[0], 0.6, 1e-9);
  expect_slices_tile(b, 3);
}

// A trial that makes the steps slower is undone; the kept split then runs 2
// more periods and a baseline before the next trial, 4 and a baseline after
// another slower one; a kept trial resets the wait to 2.
TEST(BatchBalancer, UndoesASlowerSplitAndWaitsLongerBeforeTheNextTrial) {
  BatchBalancer b(2);
  const std::vector<double> costs{0, 1e-5, 0, 2e-5};
  for (int i = 0; i < BatchBalancer::kSkipped; ++i) b.record(64, 128, 1, 1, 1);
  period(b, 1e-3, costs);  // sizing
  period(b, 1e-3, costs);
  EXPECT_NEAR(b.shares()[0], 0.55, 1e-9);  // trying
  period(b, 2e-3, costs);  // slower: undone
  EXPECT_EQ(b.shares()[0], 0.5);
  EXPECT_EQ(b.undone(), 1);
  for (int i = 0; i < 2; ++i) {
    period(b, 1e-3, costs);  // waiting, at the split it kept
    EXPECT_EQ(b.shares()[0], 0.5);
  }
  period(b, 1e-3, costs);
  EXPECT_NEAR(b.shares()[0], 0.55, 1e-9);  // the next trial
  period(b, 2e-3, costs);  // slower again: undone, wait 4
  EXPECT_EQ(b.undone(), 2);
  for (int i = 0; i < 4; ++i) period(b, 1e-3, costs);
  EXPECT_EQ(b.shares()[0], 0.5);
  EXPECT_EQ(b.trials(), 2);
  period(b, 1e-3, costs);
  EXPECT_EQ(b.trials(), 3);
  period(b, 0.9e-3, costs);  // faster: kept (the wait back to 2), and the next trial
  EXPECT_EQ(b.trials(), 4);
  period(b, 2e-3, costs);  // slower: undone
  EXPECT_EQ(b.undone(), 3);
  for (int i = 0; i < 2; ++i) period(b, 1e-3, costs);
  EXPECT_EQ(b.trials(), 4);
  period(b, 1e-3, costs);
  EXPECT_EQ(b.trials(), 5);
}

// Rank 0 decides, every rank adopts: a rank that only adopts ends its
// periods at the same steps as rank 0 and holds the same shares, through
// trials kept and undone (a mismatch here is a collective called by one rank
// and not the other).
TEST(BatchBalancer, RanksThatOnlyAdoptKeepStepWithRankZero) {
  BatchBalancer zero(2), one(2);
  const std::vector<double> costs{0, 1e-5, 0, 2e-5};
  int periods = 0;
  for (int step = 0; step < 5000; ++step) {
    const double step_s = (periods % 3 == 2) ? 2e-3 : 1e-3;  // every third period slower: undone trials too
    zero.record(64, 128, step_s / 2, 0, step_s);
    one.record(64, 128, step_s / 2, 0, step_s);
    ASSERT_EQ(zero.due(), one.due()) << "step " << step;
    if (!zero.due()) continue;
    zero.measurement();
    one.measurement();
    const std::vector<double> decision = zero.decide(costs, 128);
    zero.adopt(decision);
    one.adopt(decision);
    ASSERT_EQ(zero.shares(), one.shares());
    ++periods;
  }
  EXPECT_GT(periods, 8);
  EXPECT_GT(zero.trials(), 2);
  EXPECT_GT(zero.undone(), 0);
}

// A period lasts about kPeriodSeconds of rank 0's steps, and at least 20
// steps; measurement(): the mean fixed part per step and the cost per sample.
TEST(BatchBalancer, MeasuresAboutHalfASecondEachPeriod) {
  BatchBalancer b(2, 4);
  for (int i = 0; i < BatchBalancer::kSkipped; ++i) b.record(1, 2, 1.0, 1.0, 1.0);  // warm-up: left out
  for (int i = 0; i < 3; ++i) b.record(50, 100, 5e-4, 1e-4, 1e-3);
  EXPECT_FALSE(b.due());
  b.record(150, 300, 1.5e-3, 3e-4, 1e-3);
  EXPECT_TRUE(b.due());
  const auto m = b.measurement();
  EXPECT_NEAR(m[0], 1.5e-4, 1e-15);
  EXPECT_NEAR(m[1], 1e-5, 1e-15);
  EXPECT_FALSE(b.due());
  EXPECT_EQ(b.decide(std::vector<double>{1.5e-4, 1e-5, 1.5e-4, 1e-5}, 128).back(), 500);  // 0.5 s of 1 ms steps
  for (int i = 0; i < 4; ++i) b.record(64, 128, 0.04, 0, 0.05);
  b.measurement();
  EXPECT_EQ(b.decide(std::vector<double>{0, 1e-5, 0, 1e-5}, 128).back(), 20);  // 50 ms steps: the least
}

// adopt(): rank 0's shares and period cut every rank's windows alike; malformed ones are refused.
TEST(BatchBalancer, AdoptsRankZerosDecisionAndRefusesMalformedOnes) {
  BatchBalancer b(2);
  b.adopt(std::vector<double>{0.75, 0.25, 30});
  EXPECT_EQ(b.slice(0, 100).count, 75);
  EXPECT_EQ(b.slice(1, 100).begin, 75);
  for (int i = 0; i < 29 + BatchBalancer::kSkipped; ++i) b.record(1, 2, 0, 0, 0);
  EXPECT_FALSE(b.due());
  b.record(1, 2, 0, 0, 0);
  EXPECT_TRUE(b.due());
  EXPECT_THROW(b.adopt(std::vector<double>{1.0, 20}), InputError);
  EXPECT_THROW(b.adopt(std::vector<double>{0.5, 0.6, 20}), InputError);
  EXPECT_THROW(b.adopt(std::vector<double>{1.0, 0.0, 20}), InputError);
  EXPECT_THROW(b.adopt(std::vector<double>{std::nan(""), 0.5, 20}), InputError);
  EXPECT_THROW(b.adopt(std::vector<double>{0.5, 0.5, 0}), InputError);
  EXPECT_EQ(b.shares(), (std::vector<double>{0.75, 0.25}));
}

}  // namespace
}  // namespace dagr
