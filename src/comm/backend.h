// What a transport implements: run one Request, and make a sub-group.
//
// A backend knows its own members and moves the bytes; the Communicator in
// front of it owns ordering, async execution, timeouts and error state.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "dagr/comm/shared_buffer.h"
#include "request.h"

namespace dagr::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view name() const = 0;

  // Runs one call to completion or throws (MismatchError, PeerError, TimeoutError, Error).
  // Collectives come one at a time; a send and a recv may each run beside them.
  virtual void run(const Request& request) = 0;
  // Whether run() takes a Request carrying a transform (else the communicator
  // runs it as encode, plain sum, decode: allreduce_transform.h).
  virtual bool fuses_transforms() const { return false; }

  // Communicator::allocate_shared, once the ranks agreed on `bytes`: zeroed
  // memory, 64-byte aligned. Here ordinary memory; shared memory overrides it.
  virtual SharedBuffer allocate(std::size_t bytes, Clock::time_point deadline);

  // Called on every rank, after the ranks have exchanged (color, key): this
  // rank's new group is `members` (this group's ranks, in new-rank order), where
  // it is `new_rank`; a negative color joins none (returns nullptr). `group_id`
  // is equal across the new group and unique among the groups made from this one.
  virtual std::unique_ptr<Backend> split(int color, std::span<const int> members, int new_rank,
                                         const std::string& group_id, Clock::time_point deadline) = 0;
};

}  // namespace dagr::detail
