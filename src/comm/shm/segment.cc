#include "shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "dagr/error.h"

namespace dagr::detail {
namespace {

std::byte* map_fd(int fd, std::size_t bytes, const std::string& name) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw_errno(concat("mmap of shared memory /dev/shm", name));
  return static_cast<std::byte*>(p);
}

struct Fd {
  int fd;
  ~Fd() { close(fd); }
};

}  // namespace

Segment Segment::create(const std::string& name, std::size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) throw_errno(concat("creating shared memory /dev/shm", name));
  Fd guard{fd};
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int saved = errno;
    shm_unlink(name.c_str());
    errno = saved;
    throw_errno(concat("sizing shared memory /dev/shm", name, " to ", bytes, " bytes"));
  }
  return Segment(map_fd(fd, bytes, name), bytes);
}

Segment Segment::open(const std::string& name, Clock::time_point deadline) {
  // The creator makes the name, then sizes it: wait for both.
  for (auto pause = std::chrono::microseconds(50);; pause = std::min(pause * 2, std::chrono::microseconds(5000))) {
    const int fd = shm_open(name.c_str(), O_RDWR, 0);
    if (fd >= 0) {
      Fd guard{fd};
      struct stat st {};
      if (fstat(fd, &st) != 0) throw_errno(concat("fstat of /dev/shm", name));
      DAGR_ENFORCE(st.st_uid == geteuid(), Error, "shared memory /dev/shm", name,
                   " belongs to another user (uid ", st.st_uid, "): refusing to join it");
      if (st.st_size > 0) {
        const auto bytes = static_cast<std::size_t>(st.st_size);
        return Segment(map_fd(fd, bytes, name), bytes);
      }
    } else if (errno != ENOENT) {
      throw_errno(concat("opening shared memory /dev/shm", name));
    }
    DAGR_ENFORCE(Clock::now() < deadline, TimeoutError, "timed out waiting for rank 0 to create /dev/shm",
                 name, " (did every rank start, with the same DAGR_JOB_ID?)");
    std::this_thread::sleep_for(pause);
  }
}

Segment Segment::anonymous(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw_errno(concat("mmap of ", bytes, " anonymous bytes"));
  return Segment(static_cast<std::byte*>(p), bytes);
}

void Segment::unlink(const std::string& name) {
  if (shm_unlink(name.c_str()) != 0 && errno != ENOENT)
    throw_errno(concat("removing shared memory /dev/shm", name));
}

Segment::Segment(Segment&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

Segment::~Segment() {
  if (data_) munmap(data_, size_);
}

}  // namespace dagr::detail
