#include "dagr/comm/work.h"

#include <optional>

#include "dagr/error.h"
#include "executor.h"
#include "work_state.h"

namespace dagr {

void Work::wait(std::optional<std::chrono::milliseconds> timeout) {
  if (!state_) return;
  std::unique_lock lock(state_->mutex);
  auto is_done = [&] { return state_->done; };
  // Counted only on a caller's thread: a background call that waits on
  // another's Work is not an idle core.
  std::optional<detail::ForegroundWait> idle;
  if (!state_->done && !detail::running_in_background()) idle.emplace();
  if (timeout) {
    if (!state_->done_cv.wait_for(lock, *timeout, is_done))
      throw TimeoutError(detail::concat("Work::wait timed out after ", timeout->count(), " ms"));
  } else {
    state_->done_cv.wait(lock, is_done);
  }
  if (state_->error) std::rethrow_exception(state_->error);
}

bool Work::completed() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

}  // namespace dagr
