// The launcher library without the dagr command (and so without libtorch):
// a short run of real worker processes through dagr::launch, for the builds
// that have no dagr command (the sanitizer run, DAGR_WITH_TORCH=OFF).
// The worker program is comm_worker; its path comes from the build (COMM_WORKER).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "dagr/launch/launcher.h"

namespace dagr {
namespace {

int leftovers(const std::string& job) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))
    if (entry.path().filename().string().starts_with("dagr-" + job)) ++n;
  return n;
}

LaunchResult launch_worker(int workers, const std::string& scenario, const std::string& job) {
  LaunchOptions o;
  o.workers = workers;
  o.command = {COMM_WORKER, scenario};
  o.comm_timeout = std::chrono::seconds(60);
  o.job_id = job;
  return launch(o);
}

TEST(Launcher, CollectivesOnThreeWorkers) {
  const std::string job = "lc-coll-" + std::to_string(getpid());
  const LaunchResult r = launch_worker(3, "collectives", job);
  EXPECT_EQ(r.exit_code, 0) << r.failure;
  EXPECT_TRUE(r.failure.empty()) << r.failure;
  EXPECT_EQ(leftovers(job), 0);
}

TEST(Launcher, AKilledWorkerIsNamedAndItsSharedMemoryRemoved) {
  const std::string job = "lc-die-" + std::to_string(getpid());
  const auto start = std::chrono::steady_clock::now();
  const LaunchResult r = launch_worker(3, "die", job);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.failure.find("rank 2 was killed by signal 9"), std::string::npos) << r.failure;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_EQ(leftovers(job), 0);
}

}  // namespace
}  // namespace dagr
