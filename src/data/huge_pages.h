// Asking for 2 MiB pages under a large buffer before it is first touched.
//
// On a virtual machine each 4 KiB page's first touch is a costly fault: the
// 47 MB of Fashion-MNIST's training images took 148 ms of faults with 4 KiB
// pages and 8 ms with 2 MiB ones (memset of a fresh buffer, AMD EPYC KVM
// guest), most of a worker's data loading once the set is read from a plain
// copy. Only a hint (transparent huge pages in "madvise" mode, Debian's
// default, honour it; without them nothing changes), and only for buffers of
// 4 MiB or more.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace dagr::data {

inline void advise_huge_pages(void* data, std::size_t bytes) {
  constexpr std::uintptr_t kPage = 4096;
  if (bytes < (std::size_t{4} << 20)) return;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~(kPage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace dagr::data
