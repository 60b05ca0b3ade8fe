#include "allreduce_transform.h"

#include <vector>

#include "backend.h"
#include "request.h"

namespace dagr::detail {

// Encode everything, sum the words out of place (OpenMPI's non-blocking
// allreduce takes a slower algorithm for in-place calls of 4 or more ranks),
// decode everything. The buffers stay with the thread that runs collectives,
// so a training loop does not fault fresh pages in on every call.
void run_unfused(Backend& backend, const Request& r) {
  thread_local std::vector<std::uint32_t> words, sums;
  words.resize(r.count);
  sums.resize(r.count);
  r.transform->encode(0, r.count, words.data());
  Request plain = r;
  plain.transform = nullptr;
  plain.in = words.data();
  plain.out = sums.data();
  backend.run(plain);
  const std::uint32_t* summed = sums.data();
  r.transform->reduce(0, r.count, &summed, 1, false, backend.rank() == 0, nullptr);
}

}  // namespace dagr::detail
