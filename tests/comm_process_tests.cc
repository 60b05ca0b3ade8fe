// Ranks as real processes (fork): what threads cannot show — a rank whose
// process dies turns into a PeerError naming it on the others, within seconds,
// and the survivor lives on; liveness belongs to the process, not a thread.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/error.h"
#include "rank_threads.h"

namespace dagr {
namespace {

// Forks one process per rank; each runs body(rank, job) and exits with its
// return value (99 for an exception). Returns the wait statuses.
std::vector<int> fork_ranks(int size, const std::function<int(int, const std::string&)>& body) {
  const std::string job = testing::fresh_job_id();
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        code = body(r, job);
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

Communicator join(const std::string& job, int rank, int size,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  return Communicator::join({.job = job, .rank = rank, .size = size, .timeout = timeout});
}

// Forks one process per rank, each with a joined communicator.
std::vector<int> run_rank_processes(int size, const std::function<int(Communicator&)>& body) {
  return fork_ranks(size, [&](int rank, const std::string& job) {
    Communicator comm = join(job, rank, size);
    return body(comm);
  });
}

bool exited_zero(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

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

// A survivor that held sub-communicators when its peer died once crashed
// (SIGSEGV) while tearing them down: it must instead raise PeerError on every
// communicator, destroy them all, and go on working (threads that start and
// exit walk their robust lists, which is where the old crash came from).
TEST(Processes, ASurvivorOfAKilledPeerTearsDownItsSplitsAndLivesOn) {
  for (int trial = 0; trial < 3; ++trial) {
    const auto statuses = run_rank_processes(2, [](Communicator& world) {
      Communicator pair = *world.split(0, world.rank());
      Communicator solo = *world.split(world.rank(), 0);
      world.barrier();
      pair.barrier();
      if (world.rank() == 1) raise(SIGKILL);
      int errors = 0;
      std::vector<float> v(1000);
      for (Communicator* c : {&world, &pair}) try {
          c->allreduce(std::span<float>(v));
        } catch (const PeerError&) {
          ++errors;
        }
      solo.allreduce(std::span<float>(v));  // a group of one needs no peer
      { Communicator gone = std::move(pair); }
      { Communicator gone = std::move(world); }
      for (int t = 0; t < 4; ++t) std::thread([] {}).join();
      Communicator fresh;  // and dagr still works in this process
      fresh.allreduce(std::span<float>(v));
      return errors == 2 ? 0 : 1;
    });
    EXPECT_TRUE(exited_zero(statuses[0])) << "survivor status " << statuses[0] << " in trial " << trial;
    EXPECT_TRUE(WIFSIGNALED(statuses[1]) && WTERMSIG(statuses[1]) == SIGKILL);
  }
}

// Liveness is per process: a communicator made on a thread that has since
// exited still belongs to a live rank.
TEST(Processes, ACommunicatorMadeOnAThreadThatExitedIsStillAlive) {
  const auto statuses = fork_ranks(2, [](int rank, const std::string& job) {
    std::optional<Communicator> comm;
    std::thread([&] { comm.emplace(join(job, rank, 2)); }).join();
    if (rank == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));  // rank 1 waits, checking rank 0
    std::vector<int> v{rank + 1};
    for (int i = 0; i < 20; ++i) {
      v[0] = rank + 1;
      comm->allreduce(std::span<int>(v));
      if (rank == 1 && i % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return v[0] == 3 ? 0 : 1;
  });
  for (int s : statuses) EXPECT_TRUE(exited_zero(s)) << "status " << s;
}

// Joining never blocks on a lock: a second process claiming a rank that is
// already attached is refused at once, and the real group carries on.
TEST(Processes, ASecondProcessClaimingATakenRankIsRefusedAtOnce) {
  const std::string job = testing::fresh_job_id();
  auto child = [&](const std::function<int()>& body) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        code = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
      _exit(code);
    }
    return pid;
  };
  auto member = [&](int rank) {
    return child([&, rank] {
      Communicator comm = join(job, rank, 3);
      std::vector<int> v{1};
      comm.allreduce(std::span<int>(v));
      return v[0] == 3 ? 0 : 1;
    });
  };
  const pid_t r0 = member(0), r1 = member(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // both attached; rank 2 not yet
  const pid_t duplicate = child([&] {
    const auto start = std::chrono::steady_clock::now();
    try {
      join(job, 1, 3, std::chrono::seconds(20));
    } catch (const InputError& e) {
      const bool named = std::strstr(e.what(), "already taken");
      return named && std::chrono::steady_clock::now() - start < std::chrono::seconds(3) ? 0 : 1;
    }
    return 2;
  });
  int status = 0;
  waitpid(duplicate, &status, 0);
  EXPECT_TRUE(exited_zero(status)) << "the duplicate rank 1: status " << status;
  const pid_t r2 = member(2);
  for (pid_t pid : {r0, r1, r2}) {
    waitpid(pid, &status, 0);
    EXPECT_TRUE(exited_zero(status)) << "a member: status " << status;
  }
}

// Survivors carry on: rank 2 of 4 dies, the other three agree on who is left,
// form a group of three (renumbered) and agree on the minimum of their values.
TEST(Processes, SurvivorsOfADeadRankShrinkToAWorkingGroup) {
  const auto statuses = run_rank_processes(4, [](Communicator& world) {
    world.barrier();
    if (world.rank() == 2) raise(SIGKILL);
    std::vector<int> v{1};
    try {
      world.allreduce(std::span<int>(v));
      return 1;
    } catch (const PeerError&) {
    }
    const auto start = std::chrono::steady_clock::now();
    Communicator::Shrunk s = world.shrink(static_cast<std::uint64_t>(10 * world.rank() + 5));
    const auto took = std::chrono::steady_clock::now() - start;
    const std::vector<int> expected{0, 1, 3};
    v[0] = world.rank();
    s.comm.allreduce(std::span<int>(v));  // 0 + 1 + 3
    const int new_rank = world.rank() == 3 ? 2 : world.rank();
    const bool ok = s.comm.size() == 3 && s.comm.rank() == new_rank && s.survivors == expected &&
                    s.agreed_min == 5 && v[0] == 4 && took < std::chrono::seconds(2);
    if (!ok)
      std::fprintf(stderr, "rank %d: size %d rank %d min %llu sum %d\n", world.rank(), s.comm.size(), s.comm.rank(),
                   static_cast<unsigned long long>(s.agreed_min), v[0]);
    return ok ? 0 : 1;
  });
  for (int r : {0, 1, 3}) EXPECT_TRUE(exited_zero(statuses[r])) << "rank " << r << " status " << statuses[r];
}

// A silent (stopped) rank is left out once the timeout has passed; when it
// runs again it learns that it was left out instead of forming a group alone.
TEST(Processes, ASilentRankIsLeftOutOfTheShrunkGroup) {
  const std::string job = testing::fresh_job_id();
  std::vector<pid_t> pids;
  for (int r = 0; r < 3; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        Communicator world = join(job, r, 3, std::chrono::milliseconds(400));
        world.barrier();
        if (r == 1) raise(SIGSTOP);
        std::vector<int> v{1};
        try {
          world.allreduce(std::span<int>(v));
        } catch (const Error&) {
        }
        try {
          Communicator::Shrunk s = world.shrink();
          v[0] = 1;
          s.comm.allreduce(std::span<int>(v));
          code = r != 1 && s.comm.size() == 2 && v[0] == 2 ? 0 : 1;
        } catch (const PeerError& e) {
          code = r == 1 && std::strstr(e.what(), "left out") ? 0 : 2;
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      _exit(code);
    }
    pids.push_back(pid);
  }
  int status = 0;
  for (int r : {0, 2}) {
    waitpid(pids[r], &status, 0);
    EXPECT_TRUE(exited_zero(status)) << "rank " << r << " status " << status;
  }
  kill(pids[1], SIGCONT);
  waitpid(pids[1], &status, 0);
  EXPECT_TRUE(exited_zero(status)) << "the silent rank: status " << status;
}

}  // namespace
}  // namespace dagr
