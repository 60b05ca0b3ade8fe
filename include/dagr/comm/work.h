// The handle of an asynchronous collective (as c10d's Work).
//
// The call runs on the communicator's background thread, in the order the
// calls were issued; wait() blocks until it is done and rethrows its error.
// The buffers passed to the call must stay alive until the call has finished:
// until wait() returns or rethrows the call's own error, or completed() is
// true. A wait(timeout) that raises TimeoutError because the call is still
// running does not end it: the call goes on using the buffers (it ends within
// the communicator's timeout, or at once if the group breaks), so keep them
// alive and wait() again.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

namespace dagr {

namespace detail {
struct WorkState;
}

class Work {
 public:
  Work() = default;  // an already-completed handle
  explicit Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}

  // Blocks until the call finished; rethrows its error. With a timeout, a call
  // still running after it raises TimeoutError (the call itself goes on).
  void wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  bool completed() const;

 private:
  std::shared_ptr<detail::WorkState> state_;
};

}  // namespace dagr
