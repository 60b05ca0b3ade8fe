#include "launch/output_relay.h"

#include <unistd.h>

#include <cerrno>
#include <utility>

namespace dagr::launch_detail {

OutputStream::OutputStream(OutputStream&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), sink_(other.sink_), prefix_(std::move(other.prefix_)),
      pending_(std::move(other.pending_)), last_end_(other.last_end_) {}

OutputStream::~OutputStream() {
  if (fd_ >= 0) close(fd_);
}

void OutputStream::drain() {
  char buf[65536];
  while (fd_ >= 0) {
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n > 0) {
      pending_.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    // EIO: a pty whose other side is gone, the pty's end of file.
    if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
      relay(true);
      close(fd_);
      fd_ = -1;
      return;
    }
    if (errno == EAGAIN) break;
  }
  relay(false);
}

void OutputStream::relay(bool at_eof) {
  std::size_t start = 0;
  // A "\r\n" split between two reads: the '\r' line went out; end it.
  if (last_end_ == '\r' && !pending_.empty() && pending_[0] == '\n') {
    std::fputc('\n', sink_->file);
    if (sink_->open_line == this) sink_->open_line = nullptr;
    last_end_ = '\n';
    start = 1;
  }
  for (std::size_t end; (end = pending_.find_first_of("\r\n", start)) != std::string::npos; start = end + 1) {
    // "\r\n" is one line end (a DOS-minded program).
    if (pending_[end] == '\r' && end + 1 < pending_.size() && pending_[end + 1] == '\n') {
      write_line(std::string_view(pending_).substr(start, end - start), '\n');
      ++end;
      continue;
    }
    write_line(std::string_view(pending_).substr(start, end - start), pending_[end]);
  }
  pending_.erase(0, start);
  if (at_eof && !pending_.empty()) {
    write_line(pending_, '\n');
    pending_.clear();
  }
  std::fflush(sink_->file);
}

void OutputStream::write_line(std::string_view text, char end) {
  if (sink_->open_line && sink_->open_line != this) std::fputc('\n', sink_->file);
  std::fwrite(prefix_.data(), 1, prefix_.size(), sink_->file);
  std::fwrite(text.data(), 1, text.size(), sink_->file);
  std::fputc(end, sink_->file);
  sink_->open_line = end == '\r' ? this : nullptr;
  last_end_ = end;
}

}  // namespace dagr::launch_detail
