// dagr::SharedBuffer — memory the communicator reduces in place, with no
// staging copies.
//
//   dagr::SharedBuffer buf = comm.allocate_shared(n * sizeof(float));  // collective
//   std::span<float> grads = buf.as<float>();
//   ... fill grads ...
//   comm.allreduce(grads);  // on shared memory: each rank sums its piece straight
//                           // out of every rank's buffer and writes the result
//                           // straight into every rank's buffer
//
// On shared memory each rank's buffer is its block of one segment that every
// rank of the group maps. An in-place allreduce whose buffer is such a block on
// every rank — the same allocation and the same offset on each — moves about
// 2 × N bytes per rank instead of the staged path's 3.5 × N: no copy into
// staging and no copy out of it. Anything else (a buffer of ordinary memory on
// any rank, an out-of-place call, another collective) takes the usual path,
// so a SharedBuffer is always safe to use as plain memory. Over MPI, and in a
// group of one, allocate_shared gives ordinary memory.
//
// A SharedBuffer is a handle: copies share the memory, which lives until the
// last one goes (the segment's name is removed as soon as every rank has it
// mapped, so nothing is left in /dev/shm). Peers write into this rank's buffer
// only during an allreduce on it; between calls it is this rank's alone.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "dagr/comm/dtype.h"

namespace dagr {

class SharedBuffer {
 public:
  SharedBuffer() = default;
  // What a backend hands out: `data` (64-byte aligned) stays valid while `owner` lives.
  SharedBuffer(std::shared_ptr<void> owner, std::byte* data, std::size_t size, bool shared)
      : owner_(std::move(owner)), data_(data), size_(size), shared_(shared) {}

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  // The whole buffer as elements of T (size() / sizeof(T) of them).
  template <Element T>
  std::span<T> as() const {
    return {reinterpret_cast<T*>(data_), size_ / sizeof(T)};
  }
  // Whether it lies in memory the group shares (else ordinary memory).
  bool shared() const { return shared_; }
  // The allocation itself, for a tensor or array that keeps it alive.
  const std::shared_ptr<void>& owner() const { return owner_; }

 private:
  std::shared_ptr<void> owner_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool shared_ = false;
};

}  // namespace dagr
