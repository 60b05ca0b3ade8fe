// Relaying the workers' output to the launcher's stdout and stderr.
//
// A line is relayed when it is complete: ended by '\n', or by '\r' (a progress
// bar redrawing itself), each prefixed "[rank] " when tagging is on. Only whole
// lines are written, so lines of different ranks never mix. When a '\r' line of
// one stream is followed by a line of another stream, a '\n' ends the progress
// line first, so the two are not run together. What a worker leaves without a
// newline is written when its stream closes (it exited, or died).
#pragma once

#include <cstdio>
#include <string>

namespace dagr::launch_detail {

// Where relayed text goes, shared by every stream writing there.
struct Sink {
  FILE* file;
  const void* open_line = nullptr;  // the stream whose '\r' line is still showing
};

class OutputStream {
 public:
  OutputStream(int fd, Sink& sink, std::string prefix) : fd_(fd), sink_(&sink), prefix_(std::move(prefix)) {}
  OutputStream(OutputStream&& other) noexcept;
  OutputStream& operator=(OutputStream&&) = delete;
  ~OutputStream();

  int fd() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }  // a spare given its rank
  // Reads what is there (the descriptor is non-blocking), relays complete
  // lines; at end of file relays the rest and closes.
  void drain();

 private:
  void relay(bool at_eof);
  void write_line(std::string_view text, char end);

  int fd_;
  Sink* sink_;
  std::string prefix_;
  std::string pending_;  // bytes after the last line end
  char last_end_ = '\n';  // how the last relayed line ended
};

}  // namespace dagr::launch_detail
