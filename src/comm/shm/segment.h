// A mapping of POSIX shared memory, owned (unmapped) by this object.
//
// Segments are created 0600 with O_EXCL, under a name that carries the job, so
// two jobs never meet and another user's segment is never used.
#pragma once

#include <cstddef>
#include <string>

#include "request.h"

namespace dagr::detail {

class Segment {
 public:
  // A new named segment of `bytes` zeroed bytes; fails if the name exists.
  static Segment create(const std::string& name, std::size_t bytes);
  // The named segment once its creator has sized it; TimeoutError after `deadline`.
  static Segment open(const std::string& name, Clock::time_point deadline);
  // Private zeroed memory laid out like a segment (a group of one).
  static Segment anonymous(std::size_t bytes);
  // Removes the name (the memory lives on while mapped). Missing names are fine.
  static void unlink(const std::string& name);

  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&&) = delete;
  Segment(const Segment&) = delete;
  ~Segment();

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  Segment(std::byte* data, std::size_t size) : data_(data), size_(size) {}
  std::byte* data_;
  std::size_t size_;
};

}  // namespace dagr::detail
