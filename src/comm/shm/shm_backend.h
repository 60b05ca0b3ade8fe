// The shared-memory transport: every rank of the group on this machine maps
// one segment (see layout.h) and the collectives read their peers' data
// straight out of it.
//
// Every collective starts with an arrival: the rank writes its call's
// fingerprint (and, on the small path, its whole payload) into its slot for
// the call's parity and publishes the call number. It then waits for every
// peer's arrival and compares fingerprints, so a mismatch is seen by all.
// Since no rank can arrive at call s+1 before all have arrived at s, a rank
// writing its slot for call s+2 knows every peer has finished with call s:
// two slots per rank are enough and need no further handshake.
//
// Small payloads (what each rank would read stays under
// geometry.small_read_bytes) are done when everyone has arrived: each rank
// reduces/copies from the peers' slots itself. Large ones take the pipelined
// path described in shm_collectives.cc.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "shm/layout.h"
#include "shm/segment.h"
#include "shm/waiter.h"

namespace dagr::detail {

struct ShrinkOutcome {
  std::unique_ptr<Backend> backend;  // the new group
  std::vector<int> survivors;        // its members' ranks in the old group, in new-rank order
  std::uint64_t agreed_min = 0;
};

class ShmBackend final : public Backend {
 public:
  // Joins (rank 0: creates) the group whose segment is named `name` ("/dagr-…").
  // Returns once this rank is attached; rank 0 also waits for all others, then
  // removes the name, so nothing is left in /dev/shm even if the job dies later.
  // `world`: the group `dagr launch` started, whose ranks are the launcher's,
  // so a rank that never joins can be reported to it by number.
  // `world_rank`: this rank's number in that group (-1: `rank`), by which
  // errors in any group name it. `launched_ranks`: for a group made by
  // split(), every member's number in the launched group, so that one that
  // never joins is reported to the launcher too.
  static std::unique_ptr<ShmBackend> join(const std::string& name, int rank, int size,
                                          Clock::time_point deadline, bool world = false, int world_rank = -1,
                                          std::vector<int> launched_ranks = {});
  // A group of one in private memory.
  static std::unique_ptr<ShmBackend> solo();
  ~ShmBackend() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "shm"; }
  void run(const Request& request) override;
  bool fuses_transforms() const override { return true; }
  // A segment with one block per rank (shm_shared.cc); this rank's block.
  SharedBuffer allocate(std::size_t bytes, Clock::time_point deadline) override;
  std::unique_ptr<Backend> split(int color, std::span<const int> members, int new_rank,
                                 const std::string& group_id, Clock::time_point deadline) override;

  // After a failure: agree with the other ranks still alive on who they are,
  // and join a new group of just them (shm_shrink.cc). `value` is this rank's
  // number to agree on; the outcome carries the minimum over the survivors.
  ShrinkOutcome shrink(std::uint64_t value, std::chrono::milliseconds timeout);

 private:
  ShmBackend(Segment segment, const Layout& layout, std::string name, int rank, bool world, int world_rank);
  void attach();
  bool gone(int peer) const;  // died or left, as far as this rank can tell now

  // One collective: arrival, then the small or the large path.
  void collective(const Request& r);
  void arrive(const Request& r, bool small);
  void small_path(const Request& r);
  void large_path(const Request& r);

  // The large path's algorithms (shm_collectives.cc).
  enum class Gather { all, root, none };
  template <class Plan>
  void reduce_pipeline(const Request& r, const Plan& plan, Gather gather);
  void broadcast_pipeline(const Request& r);
  void allgather_pipeline(const Request& r);

  // Point to point (shm_p2p.cc): touch only their channel, so they may run
  // on other threads than the collectives (one send and one recv at a time).
  void send(const Request& r, const WaitContext& context) const;
  void recv(const Request& r, const WaitContext& context) const;

  // Allreduce in place on shared buffers (shm_shared.cc). Where a call's
  // buffer lies: a live allocation's number (0: none) and the offset in the block.
  struct SharedPlace {
    std::uint64_t allocation = 0;
    std::uint64_t offset = 0;
    bool operator==(const SharedPlace&) const = default;
  };
  struct SharedBlocks {  // one allocate(): rank r's block at base + r · stride
    std::uint64_t allocation;
    std::weak_ptr<Segment> segment;
    std::byte* base;
    std::size_t stride, bytes;
  };
  SharedPlace locate(const Request& r) const;
  // After the arrival: the blocks of place_ if every rank's buffer is there, else null.
  const SharedBlocks* in_shared_buffers() const;
  void shared_allreduce(const Request& r, const SharedBlocks& blocks, std::size_t offset);

  // Pipeline helpers.
  void publish(PaddedCounter& counter, std::uint64_t value);
  void wait_counter(int peer, PaddedCounter RankControl::*counter, std::uint64_t at_least);
  void wait_buffer_free(std::uint64_t global_segment);  // every peer done with its previous use

  Segment segment_;
  SegmentView view_;
  std::string name_;
  int rank_;
  int world_rank_;  // this rank in the launched group (RankControl::world_rank)
  bool world_;      // this is the launched group (join's `world`)
  int size_;
  Waiter waiter_;
  std::uint64_t calls_ = 0;     // collectives so far: the call number
  std::uint64_t segments_ = 0;  // pipeline segments so far (equal on all ranks)
  WaitContext context_;         // of the collective in progress, for waits and errors
  Fingerprint current_;
  std::vector<const void*> sources_;  // one per rank: the inputs of a reduction
  std::vector<const std::uint32_t*> words_;  // the same for a transformed allreduce
  bool attached_ = false;  // this object holds the rank's liveness lock
  std::uint64_t allocations_ = 0;     // allocate() calls so far (equal on all ranks)
  std::vector<SharedBlocks> shared_;  // what they made, while anyone holds it
  SharedPlace place_;                 // of the collective in progress
};

}  // namespace dagr::detail
