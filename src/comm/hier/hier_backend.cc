#include "hier/hier_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "dagr/error.h"
#include "reduce_kernels.h"
#include "shm/shm_backend.h"

namespace dagr::detail {
namespace {

constexpr std::size_t kHostBytes = 64;

std::string this_host() {
  if (const char* h = std::getenv("DAGR_HOST"); h && *h) return h;
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

Request request(OpKind kind, const void* in, void* out, std::size_t count, DType dtype, const Request& like) {
  Request r;
  r.kind = kind;
  r.in = in;
  r.out = out;
  r.count = count;
  r.dtype = dtype;
  r.deadline = like.deadline;
  r.timeout = like.timeout;
  return r;
}

}  // namespace

HierBackend::HierBackend(std::unique_ptr<Backend> world, Clock::time_point deadline) : world_(std::move(world)) {
  const int n = world_->size(), me = world_->rank();
  Request like;
  like.deadline = deadline;
  // Every rank's host name, fixed width.
  std::string host = this_host().substr(0, kHostBytes - 1);
  std::vector<char> mine(kHostBytes, 0), all(kHostBytes * static_cast<std::size_t>(n));
  std::memcpy(mine.data(), host.data(), host.size());
  world_->run(request(OpKind::allgather, mine.data(), all.data(), kHostBytes, DType::uint8, like));
  std::vector<std::string> hosts;
  for (int p = 0; p < n; ++p) hosts.emplace_back(all.data() + p * kHostBytes);
  std::vector<std::string> distinct = hosts;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  hosts_ = static_cast<int>(distinct.size());
  const int color = static_cast<int>(std::find(distinct.begin(), distinct.end(), host) - distinct.begin());

  std::vector<int> local, leaders;
  for (int p = 0; p < n; ++p) {
    if (hosts[p] == host) local.push_back(p);
    if (std::find(hosts.begin(), hosts.begin() + p, hosts[p]) == hosts.begin() + p) leaders.push_back(p);
  }
  const int local_rank = static_cast<int>(std::find(local.begin(), local.end(), me) - local.begin());
  const bool leader = local_rank == 0;
  auto local_mpi = world_->split(color, local, local_rank, concat("host", color), deadline);
  leaders_ = world_->split(leader ? 0 : -1, leaders,
                           static_cast<int>(std::find(leaders.begin(), leaders.end(), me) - leaders.begin()),
                           "leaders", deadline);
  // The host's shared memory: its leader names it, the others learn the name over MPI.
  char job[32] = {};
  if (leader) {
    std::random_device device;
    std::snprintf(job, sizeof job, "hier-%08x%08x", device(), device());
  }
  local_mpi->run(request(OpKind::broadcast, job, job, sizeof job, DType::uint8, like));
  local_ = ShmBackend::join(concat("/dagr-", job), local_rank, static_cast<int>(local.size()), deadline);
}

void HierBackend::run(const Request& r) {
  if (r.kind != OpKind::allreduce) return world_->run(r);
  if (hosts_ == 1) return local_->run(r);  // one host: shared memory is the whole story
  const ReduceOp op = r.op == ReduceOp::avg ? ReduceOp::sum : r.op;
  Request step = r;  // 1. reduce onto the host's leader
  step.kind = OpKind::reduce;
  step.op = op;
  step.root = 0;
  local_->run(step);
  if (leaders_) {  // 2. leaders combine the hosts' sums
    step.kind = OpKind::allreduce;
    step.in = r.out;
    leaders_->run(step);
  }
  step.kind = OpKind::broadcast;  // 3. spread on every host
  step.in = r.out;
  local_->run(step);
  if (r.op == ReduceOp::avg) divide(r.out, r.count, r.dtype, size());
}

}  // namespace dagr::detail
