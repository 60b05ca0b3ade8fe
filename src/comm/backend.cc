#include "backend.h"

#include <cstdlib>
#include <cstring>

#include "dagr/error.h"

namespace dagr::detail {

SharedBuffer Backend::allocate(std::size_t bytes, Clock::time_point) {
  const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  DAGR_ENFORCE(p != nullptr, Error, "allocate_shared: out of memory for ", bytes, " bytes");
  std::memset(p, 0, rounded);
  return SharedBuffer(std::shared_ptr<void>(p, std::free), static_cast<std::byte*>(p), bytes, false);
}

}  // namespace dagr::detail
