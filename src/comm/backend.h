// What a transport implements: run one Request, and make a sub-group.
//
// A backend knows its own members and moves the bytes; the Communicator in
// front of it owns ordering, async execution, timeouts and error state.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

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

  // A new group of the ranks `members` (this group's ranks, listed in new-rank
  // order). Called by exactly those members; `group_id` is equal on all of
  // them and unique among the groups made from this one.
  virtual std::unique_ptr<Backend> make_group(std::span<const int> members, int new_rank,
                                              const std::string& group_id,
                                              Clock::time_point deadline) = 0;
};

}  // namespace dagr::detail
