#include "job_secret.h"

#include <sodium.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "dagr/error.h"

namespace dagr::detail {
namespace {

struct Given {
  std::string secret;
  std::string error;  // why DAGR_SECRET_FD gave none, thrown at the first use
};

constexpr std::size_t kMaxSecretBytes = 4096;

// Reads DAGR_SECRET_FD to its end, closes it and unsets the variable.
Given read_given() {
  Given given;
  const char* text = std::getenv("DAGR_SECRET_FD");
  if (!text) return given;
  const std::string name = concat("DAGR_SECRET_FD=", text);
  char* end = nullptr;
  const long fd = std::strtol(text, &end, 10);
  unsetenv("DAGR_SECRET_FD");
  if (end == text || *end != '\0' || fd < 0 || fd > 1 << 20) {
    given.error = concat(name, " is not a descriptor");
    return given;
  }
  char buf[512];
  for (;;) {
    const ssize_t n = read(static_cast<int>(fd), buf, sizeof buf);
    if (n > 0 && given.secret.size() + static_cast<std::size_t>(n) <= kMaxSecretBytes) {
      given.secret.append(buf, static_cast<std::size_t>(n));
    } else if (n > 0) {
      given.error = concat(name, " holds more than ", kMaxSecretBytes, " bytes: not a job secret");
      break;
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      given.error = concat(name, " cannot be read: ", std::strerror(errno));
      break;
    }
  }
  close(static_cast<int>(fd));
  if (!given.secret.empty() && given.secret.back() == '\n') given.secret.pop_back();
  if (given.error.empty() && given.secret.empty())
    given.error = concat(name, " gave no secret (the descriptor was empty: read already, by another process?)");
  if (!given.error.empty()) given.secret.clear();
  return given;
}

const Given& given() {
  static const Given g = read_given();
  return g;
}

// As early as possible: the pipe is emptied and closed while the program has
// barely started, not seconds later when it first joins a group.
[[gnu::constructor]] void read_at_load() { given(); }

}  // namespace

const std::string& job_secret() {
  const Given& g = given();
  DAGR_ENFORCE(g.error.empty(), InputError, g.error);
  return g.secret;
}

AdmissionTag admission_tag(const std::string& secret, const std::array<std::uint8_t, 16>& salt) {
  std::string message = "dagr-join";
  message.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  message += secret;
  AdmissionTag tag;
  static_assert(sizeof tag == crypto_hash_sha256_BYTES);
  crypto_hash_sha256(tag.data(), reinterpret_cast<const unsigned char*>(message.data()), message.size());
  return tag;
}

void fill_random(void* out, std::size_t bytes) {
  auto* p = static_cast<char*>(out);
  while (bytes > 0) {
    const ssize_t n = getrandom(p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("getrandom");
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
}

}  // namespace dagr::detail
