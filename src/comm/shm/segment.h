// A mapping of POSIX shared memory, owned (unmapped and closed) by this object.
//
// Segments are created 0600 with O_EXCL, under a name that carries the job, so
// two jobs never meet and another user's segment is never used. Creation
// reserves every byte (posix_fallocate), so a full /dev/shm is an error at
// set-up naming the bytes needed, never a SIGBUS in the middle of a collective.
//
// Liveness: each rank holds an open-file-description lock (F_OFD_SETLK) on one
// byte of the segment's file, byte `rank`, for as long as it is attached. The
// kernel drops such a lock when the last descriptor of its open file goes, that
// is when the process exits or dies, whatever thread took it, and a peer sees
// that with F_OFD_GETLK. Unlike a robust mutex (owned by a thread, and kept on
// that thread's robust list after a peer reads EOWNERDEAD), an OFD lock is owned
// by the open file, so it is per process and leaves nothing behind in memory.
// Each Segment opens its own descriptor, so ranks that are threads of one
// process lock against each other as processes do.
#pragma once

#include <cstddef>
#include <string>

#include "request.h"

namespace dagr::detail {

class Segment {
 public:
  // A new named segment of `bytes` zeroed, reserved bytes; fails if the name
  // exists, and with the bytes needed and free if /dev/shm cannot hold it.
  static Segment create(const std::string& name, std::size_t bytes);
  // The named segment once its creator has sized it; TimeoutError after `deadline`.
  static Segment open(const std::string& name, Clock::time_point deadline);
  // Private zeroed memory laid out like a segment (a group of one: no locks).
  static Segment anonymous(std::size_t bytes);
  // Removes the name (the memory lives on while mapped). Missing names are fine.
  static void unlink(const std::string& name);

  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&&) = delete;
  Segment(const Segment&) = delete;
  ~Segment();

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

  // Takes the liveness lock of `rank` for this open file; false if another
  // open file (another process, or another rank's Segment) holds it.
  bool lock_rank(int rank) const;
  // Releases it (a rank leaving the group on purpose).
  void unlock_rank(int rank) const;
  // Whether some other open file holds the liveness lock of `rank`.
  bool rank_locked(int rank) const;

 private:
  Segment(std::byte* data, std::size_t size, int fd) : data_(data), size_(size), fd_(fd) {}
  std::byte* data_;
  std::size_t size_;
  int fd_;  // -1 for anonymous memory
};

}  // namespace dagr::detail
