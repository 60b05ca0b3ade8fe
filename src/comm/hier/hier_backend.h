// Hierarchical collectives (as NCCL and Horovod do): ranks on one host reduce
// through shared memory, one leader per host exchanges over MPI, and the
// result spreads through shared memory again.
//
//   allreduce = shm reduce to the host's leader → MPI allreduce among leaders
//               → shm broadcast from the leader
//
// Hosts are told apart by their hostname, or DAGR_HOST where set (so a test on
// one machine can pretend to be several). Every other call goes to the flat
// MPI group. The sum runs in another order than flat MPI's, so float results
// can differ from the flat ones in the last bits; integer-valued data agree.
#pragma once

#include "backend.h"

namespace dagr::detail {

class HierBackend final : public Backend {
 public:
  HierBackend(std::unique_ptr<Backend> world, Clock::time_point deadline);

  int rank() const override { return world_->rank(); }
  int size() const override { return world_->size(); }
  std::string_view name() const override { return "hier"; }
  void run(const Request& request) override;
  std::unique_ptr<Backend> split(int color, std::span<const int> members, int new_rank,
                                 const std::string& group_id, Clock::time_point deadline) override {
    return world_->split(color, members, new_rank, group_id, deadline);
  }
  int hosts() const { return hosts_; }

 private:
  std::unique_ptr<Backend> world_;    // every rank, over MPI
  std::unique_ptr<Backend> local_;    // this host's ranks, over shared memory
  std::unique_ptr<Backend> leaders_;  // one rank per host, over MPI (null on the others)
  int hosts_ = 1;
};

}  // namespace dagr::detail
