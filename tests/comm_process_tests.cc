// Ranks as real processes (fork): what threads cannot show — a rank whose
// process dies turns into a PeerError naming it on the others, within seconds.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/error.h"
#include "rank_threads.h"

namespace dagr {
namespace {

// Forks one process per rank; each runs body and exits with its return value.
std::vector<int> run_rank_processes(int size, const std::function<int(Communicator&)>& body) {
  const std::string job = testing::fresh_job_id();
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        Communicator comm = Communicator::join({.job = job, .rank = r, .size = size,
                                                .timeout = std::chrono::seconds(30)});
        code = body(comm);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      _exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<int> statuses;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    statuses.push_back(status);
  }
  return statuses;
}

TEST(Processes, AKilledRankIsAPeerErrorOnTheOthersWithinSeconds) {
  for (std::size_t count : {std::size_t{4}, std::size_t{1} << 20}) {  // small and pipelined path
    const auto statuses = run_rank_processes(3, [count](Communicator& comm) {
      comm.barrier();
      if (comm.rank() == 1) raise(SIGKILL);
      std::vector<float> v(count);
      const auto start = std::chrono::steady_clock::now();
      try {
        comm.allreduce(std::span<float>(v));
      } catch (const PeerError& e) {
        const bool fast = std::chrono::steady_clock::now() - start < std::chrono::seconds(5);
        const bool named = std::strstr(e.what(), "rank 1") && std::strstr(e.what(), "died");
        std::fprintf(stderr, "rank %d: %s\n", comm.rank(), e.what());
        return fast && named ? 0 : 1;
      }
      return 2;
    });
    EXPECT_TRUE(WIFSIGNALED(statuses[1]) && WTERMSIG(statuses[1]) == SIGKILL);
    for (int r : {0, 2}) EXPECT_TRUE(WIFEXITED(statuses[r]) && WEXITSTATUS(statuses[r]) == 0) << "rank " << r;
  }
}

TEST(Processes, CollectivesAcrossProcessesAgreeBitwise) {
  const auto statuses = run_rank_processes(4, [](Communicator& comm) {
    std::vector<float> v(1 << 20);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 1.0f / static_cast<float>(i + comm.rank() + 1);
    comm.allreduce(std::span<float>(v));
    std::vector<float> all(v.size() * comm.size());
    comm.allgather(std::span<const float>(v), std::span<float>(all));
    for (int r = 1; r < comm.size(); ++r)
      if (std::memcmp(all.data(), all.data() + r * v.size(), v.size() * sizeof(float)) != 0) return 1;
    return 0;
  });
  for (int s : statuses) EXPECT_TRUE(WIFEXITED(s) && WEXITSTATUS(s) == 0);
}

}  // namespace
}  // namespace dagr
