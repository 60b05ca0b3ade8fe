// The MPI transport. Every operation — messages and collectives alike — is
// MPI's non-blocking one, posted and polled to completion or to its deadline
// by MpiRuntime (so operations on different threads and communicators
// progress together and every wait is bounded).
//
// Every collective starts with a check that all ranks called the same one
// (CheckedExchange: a recursive-doubling exchange of fingerprints, whose
// message pattern does not depend on what was called, so it completes even when
// the calls differ). On a difference the ranks allgather the fingerprints and
// raise a MismatchError naming both sides, instead of the undefined behaviour
// MPI gives mismatched calls. An allreduce up to 64 KiB, or of any size on two
// ranks, is reduced inside that exchange: one round trip for two ranks, as
// MPI_Allreduce. Every other collective follows the check as MPI's own.
#pragma once

#include <mpi.h>

#include "backend.h"
#include "mpi/mpi_runtime.h"

namespace dagr::detail {

class MpiBackend final : public Backend {
 public:
  // Works on a duplicate of `comm` (errors returned, not fatal); collective
  // over `comm`, TimeoutError at `deadline`.
  MpiBackend(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, Clock::time_point deadline);
  ~MpiBackend() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "mpi"; }
  void run(const Request& request) override;
  std::unique_ptr<Backend> split(int color, std::span<const int> members, int new_rank,
                                 const std::string& group_id, Clock::time_point deadline) override;

 private:
  // with_data: the exchange also does r (an allreduce), except for avg's division.
  void check_fingerprints(const Request& r, const std::function<std::string()>& what, bool with_data);
  void collective(const Request& r, const std::function<std::string()>& what);  // after the check
  void point_to_point(const Request& r, const std::function<std::string()>& what);
  // Posts a non-blocking operation and polls it (with everything else in
  // flight) to completion or r.deadline. `post` owns what it captures for as
  // long as the operation exists.
  void post_and_wait(std::function<int(MPI_Request*)> post, const Request& r,
                     const std::function<std::string()>& what, MPI_Status* status = nullptr);

  std::shared_ptr<MpiRuntime> runtime_;
  MPI_Comm comm_ = MPI_COMM_NULL;           // MPI's collectives, the caller's messages
  MPI_Comm exchange_comm_ = MPI_COMM_NULL;  // the checked exchanges' messages only
  int rank_ = 0, size_ = 1;
  std::uint64_t calls_ = 0;
};

}  // namespace dagr::detail
