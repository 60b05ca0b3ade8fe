#include "tensorboard.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>

#include "dagr/error.h"

namespace dagr::cli {
namespace {

// Protobuf wire format: a key is (field << 3) | wire type; 0 varint, 1 64-bit,
// 2 length-delimited, 5 32-bit. Integers little-endian.
void varint(std::string& out, std::uint64_t v) {
  for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7f) | 0x80);
  out += static_cast<char>(v);
}
template <class T>
void little_endian(std::string& out, T v) {
  static_assert(std::endian::native == std::endian::little);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}
void field_bytes(std::string& out, int field, const std::string& bytes) {
  varint(out, static_cast<std::uint64_t>(field) << 3 | 2);
  varint(out, bytes.size());
  out += bytes;
}
void field_double(std::string& out, int field, double v) {
  varint(out, static_cast<std::uint64_t>(field) << 3 | 1);
  little_endian(out, v);
}
void field_float(std::string& out, int field, float v) {
  varint(out, static_cast<std::uint64_t>(field) << 3 | 5);
  little_endian(out, v);
}
void field_varint(std::string& out, int field, std::uint64_t v) {
  varint(out, static_cast<std::uint64_t>(field) << 3 | 0);
  varint(out, v);
}

std::uint32_t masked(std::uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

std::uint32_t crc32c(const void* data, std::size_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

EventWriter::EventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const double now = now_seconds();
  path_ = fmt::format("{}/events.out.tfevents.{}.{}.{}", dir, static_cast<long long>(now), host, getpid());
  file_.open(path_, std::ios::binary | std::ios::trunc);
  DAGR_ENFORCE(file_, InputError, "--tensorboard: cannot write ", path_);
  std::string event;
  field_double(event, 1, now);
  field_bytes(event, 3, "brain.Event:2");
  record(event);
}

void EventWriter::scalar(const std::string& tag, std::int64_t step, double wall_time, float value) {
  std::string value_message, summary, event;
  field_bytes(value_message, 1, tag);
  field_float(value_message, 2, value);
  field_bytes(summary, 1, value_message);
  field_double(event, 1, wall_time);
  field_varint(event, 2, static_cast<std::uint64_t>(step));
  field_bytes(event, 5, summary);
  record(event);
}

void EventWriter::record(const std::string& event) {
  std::string frame;
  const std::uint64_t length = event.size();
  little_endian(frame, length);
  little_endian(frame, masked(crc32c(frame.data(), 8)));
  frame += event;
  little_endian(frame, masked(crc32c(event.data(), event.size())));
  file_.write(frame.data(), static_cast<std::streamsize>(frame.size()));
  file_.flush();
  DAGR_ENFORCE(file_, Error, "--tensorboard: cannot write ", path_);
}

}  // namespace dagr::cli
