// TensorBoard scalar event files, written without TensorFlow or protobuf.
//
// A file events.out.tfevents.<seconds>.<host>.<pid> holds records:
//   uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
// (little-endian; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8). Each data
// is a tensorflow.Event protobuf, encoded here by hand:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record carries file_version "brain.Event:2", the rest one scalar each.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace dagr::cli {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord frames use it.
std::uint32_t crc32c(const void* data, std::size_t size);

class EventWriter {
 public:
  // Creates `dir` if needed and a new event file in it; InputError if it cannot.
  explicit EventWriter(const std::string& dir);
  void scalar(const std::string& tag, std::int64_t step, double wall_time, float value);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  std::ofstream file_;
};

}  // namespace dagr::cli
