#include "shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "dagr/error.h"

namespace dagr::detail {
namespace {

std::byte* map_fd(int fd, std::size_t bytes, const std::string& name) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw_errno(concat("mmap of shared memory /dev/shm", name));
  return static_cast<std::byte*>(p);
}

// Closes the descriptor unless released to a Segment.
struct Fd {
  int fd;
  int release() { return std::exchange(fd, -1); }
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

std::string mib(double bytes) { return concat(static_cast<long long>(bytes / (1 << 20) + 0.5), " MiB"); }

// What /dev/shm could still hold, for the error message.
std::string shm_free() {
  struct statvfs s {};
  if (statvfs("/dev/shm", &s) != 0) return "unknown";
  return mib(static_cast<double>(s.f_bavail) * static_cast<double>(s.f_frsize));
}

struct flock rank_byte(int rank, short type) {
  struct flock lock {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = rank;
  lock.l_len = 1;
  return lock;
}

}  // namespace

Segment Segment::create(const std::string& name, std::size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  DAGR_ENFORCE(fd >= 0 || errno != EEXIST, Error, "shared memory /dev/shm", name,
               " exists already: another process set up this group first (two processes with RANK=0, "
               "or one that is not this job's)");
  if (fd < 0) throw_errno(concat("creating shared memory /dev/shm", name));
  Fd guard{fd};
  // Reserve every page now (this also sizes the file): tmpfs is sparse, and a
  // page it cannot supply later is a SIGBUS inside a collective.
  const int rc = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (rc != 0) {
    shm_unlink(name.c_str());
    if (rc == ENOSPC || rc == EFBIG)
      throw Error(concat("not enough shared memory: this group needs ", mib(static_cast<double>(bytes)),
                         " in /dev/shm (/dev/shm", name, ") but only ", shm_free(),
                         " are free; enlarge /dev/shm (containers: --shm-size) or use fewer ranks per host"));
    errno = rc;
    throw_errno(concat("reserving ", bytes, " bytes of shared memory /dev/shm", name));
  }
  return Segment(map_fd(fd, bytes, name), bytes, guard.release());
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
        return Segment(map_fd(fd, bytes, name), bytes, guard.release());
      }
    } else if (errno == EACCES) {
      throw Error(concat("shared memory /dev/shm", name, " belongs to another user (permission denied: a group's ",
                         "segment is readable and writable by its owner only, mode 0600): refusing to join it"));
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
  return Segment(static_cast<std::byte*>(p), bytes, -1);
}

void Segment::unlink(const std::string& name) {
  if (shm_unlink(name.c_str()) != 0 && errno != ENOENT)
    throw_errno(concat("removing shared memory /dev/shm", name));
}

Segment::Segment(Segment&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)) {}

Segment::~Segment() {
  if (data_) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
}

bool Segment::lock_rank(int rank) const {
  if (fd_ < 0) return true;
  struct flock lock = rank_byte(rank, F_WRLCK);
  if (fcntl(fd_, F_OFD_SETLK, &lock) == 0) return true;
  if (errno == EAGAIN || errno == EACCES) return false;
  throw_errno(concat("taking the liveness lock of rank ", rank));
}

void Segment::unlock_rank(int rank) const {
  if (fd_ < 0) return;
  struct flock lock = rank_byte(rank, F_UNLCK);
  fcntl(fd_, F_OFD_SETLK, &lock);
}

bool Segment::rank_locked(int rank) const {
  if (fd_ < 0) return true;
  struct flock lock = rank_byte(rank, F_WRLCK);
  if (fcntl(fd_, F_OFD_GETLK, &lock) != 0) throw_errno(concat("reading the liveness lock of rank ", rank));
  return lock.l_type != F_UNLCK;
}

}  // namespace dagr::detail
