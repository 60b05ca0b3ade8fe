// A worker program for tests that run real processes through `dagr launch`.
//
//   comm_worker collectives   every collective and dtype family, split, send/recv; exit 0 if all correct
//   comm_worker mismatch      rank 1 calls a different count; exit 0 if this rank got a MismatchError naming both
//   comm_worker die           the last rank leaves a stray segment in /dev/shm and kills itself
//   comm_worker steps S [split]  allreduces in place on shared buffers (also on a sub-group, staged, with
//                             "split") for S seconds; an error is not caught, so it aborts the process as
//                             in a program that does not catch it
//   comm_worker print-sleep-print  prints a line, sleeps a second, prints another (stdio's own buffering)
//   comm_worker exit-late     every rank joins and meets the others in a barrier; the last rank then
//                             sleeps a second and exits with status 3, the others exit 0 at once
//   comm_worker die-unjoined  the last rank kills itself before it joins; the others join and wait in a barrier
//   comm_worker secure        secure aggregation: sums equal the fixed-point sum bitwise (1 to 300000 floats:
//                             the one-step and the pipelined paths); a NaN is an InputError on every rank
//   comm_worker secure-scan   rank 0 scans the shared memory for rank 1's plain contribution (must not find it)
//   comm_worker secure-wrong-key  rank 1's key pair is inconsistent: every rank must detect it
//   comm_worker standby [die|linger]  waits as a spare when launched as one (dagr::wait_until_started), joins, and
//                             prints "rank R attempt K pid P"; in attempt 0 fails if the launcher has more
//                             children than ranks before this rank joined (a spare too early), then waits (10 s at most) until
//                             the launcher's spares are all waiting, and with "die" the last rank then kills itself,
//                             with "linger" every rank waits 3 s more
#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/comm/secure_aggregation.h"
#include "dagr/comm/shared_buffer.h"
#include "dagr/error.h"
#include "dagr/launch/standby.h"

using namespace dagr;

namespace {

int failures = 0;
void check(bool ok, const char* what, int rank) {
  if (!ok) {
    std::fprintf(stderr, "rank %d: FAILED %s\n", rank, what);
    ++failures;
  }
}

template <class T>
void reducing(Communicator& comm, std::size_t count) {
  const int n = comm.size(), me = comm.rank();
  std::vector<T> v(count);
  for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<T>((me + 1) * (i % 3 + 1));
  const std::vector<T> input = v;
  std::vector<T> out(count);
  comm.allreduce(std::span<const T>(input), std::span<T>(out));  // out of place
  comm.allreduce(std::span<T>(v));                                 // in place
  bool ok = true;
  for (std::size_t i = 0; i < count; ++i) ok = ok && v[i] == static_cast<T>(n * (n + 1) / 2 * (i % 3 + 1));
  check(ok, "allreduce", me);
  check(out == v, "out-of-place allreduce", me);
  std::vector<T> blocks(count * n, static_cast<T>(me)), mine(count);
  comm.reduce_scatter(std::span<const T>(blocks), std::span<T>(mine), ReduceOp::max);
  ok = true;
  for (T x : mine) ok = ok && x == static_cast<T>(n - 1);
  check(ok, "reduce_scatter", me);
  std::vector<T> r(count, static_cast<T>(1));
  comm.reduce(std::span<T>(r), 0, ReduceOp::sum);
  ok = true;
  for (T x : r) ok = ok && x == static_cast<T>(me == 0 ? n : 1);
  check(ok, "reduce", me);
}

template <class T>
void moving(Communicator& comm, std::size_t count) {
  const int n = comm.size(), me = comm.rank();
  std::vector<T> b(count, static_cast<T>(me == n - 1 ? 7 : 0));
  comm.broadcast(std::span<T>(b), n - 1);
  bool ok = true;
  for (T x : b) ok = ok && x == static_cast<T>(7);
  check(ok, "broadcast", me);
  std::vector<T> mine(count, static_cast<T>(me)), all(count * n);
  comm.allgather(std::span<const T>(mine), std::span<T>(all));
  ok = true;
  for (std::size_t i = 0; i < all.size(); ++i) ok = ok && all[i] == static_cast<T>(i / count);
  check(ok, "allgather", me);
}

// float16 and bfloat16: MPI has no such types, so these go through dagr's own MPI ops.
template <class T>
void sixteen_bit(Communicator& comm, std::size_t count) {
  const int n = comm.size(), me = comm.rank();
  std::vector<T> v(count, T(static_cast<float>(me + 1))), m(count, T(static_cast<float>(me)));
  comm.allreduce(std::span<T>(v));
  comm.allreduce(std::span<T>(m), ReduceOp::max);
  bool ok = true;
  for (std::size_t i = 0; i < count; ++i)
    ok = ok && static_cast<float>(v[i]) == n * (n + 1) / 2.0f && static_cast<float>(m[i]) == n - 1.0f;
  check(ok, "16-bit allreduce", me);
}

int collectives(Communicator& comm) {
  for (std::size_t count : {std::size_t{1}, std::size_t{13}, std::size_t{4099}, std::size_t{1000003}}) {
    reducing<float>(comm, count);
    reducing<double>(comm, count);
    reducing<std::int32_t>(comm, count);
    reducing<std::int64_t>(comm, count);
    moving<float>(comm, count);
    moving<std::uint8_t>(comm, count);
    sixteen_bit<Half>(comm, count);
    sixteen_bit<BFloat16>(comm, count);
  }
  // Sub-groups: even and odd ranks.
  auto sub = comm.split(comm.rank() % 2, comm.rank());
  std::vector<int> one(5, 1);
  sub->allreduce(std::span<int>(one));
  check(one[4] == sub->size(), "split allreduce", comm.rank());
  // A ring of messages.
  const int n = comm.size(), next = (comm.rank() + 1) % n, prev = (comm.rank() + n - 1) % n;
  if (n > 1) {
    std::vector<double> out(300000, comm.rank()), in(300000);
    Work w = comm.send_async(std::span<const double>(out), next);
    comm.recv(std::span<double>(in), prev);
    w.wait();
    check(in[299999] == prev, "send/recv", comm.rank());
  }
  comm.barrier();
  if (failures == 0) std::printf("rank %d of %d: all collectives correct\n", comm.rank(), n);
  return failures == 0 ? 0 : 1;
}

int mismatch(Communicator& comm) {
  std::vector<float> v(comm.rank() == 1 ? 11 : 10);
  try {
    comm.allreduce(std::span<float>(v));
  } catch (const MismatchError& e) {
    const std::string m = e.what();
    const bool names_both = m.find("count=10") != std::string::npos && m.find("count=11") != std::string::npos;
    std::printf("caught MismatchError: %s\n", e.what());
    return names_both ? 0 : 1;
  }
  std::printf("no error\n");
  return 1;
}

int die(Communicator& comm) {
  comm.barrier();
  if (comm.rank() == comm.size() - 1) {
    if (const char* job = std::getenv("DAGR_JOB_ID")) {  // under dagr launch
      const std::string stray = std::string("/dagr-") + job + ".stray";
      const int fd = shm_open(stray.c_str(), O_CREAT | O_RDWR, 0600);
      if (fd >= 0) close(fd);
    }
    raise(SIGKILL);
  }
  std::vector<float> v(1 << 20);
  comm.allreduce(std::span<float>(v));  // PeerError here; the launcher stops us anyway
  return 0;
}

// No try: a PeerError or TimeoutError ends the process through std::terminate.
int steps(double seconds, bool split) {
  Communicator comm = Communicator::from_env();
  std::optional<Communicator> sub;
  if (split) sub = comm.split(comm.rank() % 2, comm.rank());
  // In shared buffers: the world's allreduce runs in place on them (no staging),
  // the sub-group's (not where its buffers are) through staging.
  const SharedBuffer buffer = comm.allocate_shared((1 << 16) * sizeof(float));
  const std::span<float> v = buffer.as<float>();
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  long n = 0;
  while (std::chrono::steady_clock::now() < end) {
    comm.allreduce(v);
    if (sub) sub->allreduce(v);
    if (++n == 1) std::printf("rank %d: stepping\n", comm.rank());
  }
  comm.barrier();
  std::printf("rank %d: %ld steps\n", comm.rank(), n);
  return 0;
}

int print_sleep_print() {
  std::printf("first line\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::printf("second line\n");
  return 0;
}

}  // namespace

// ---- secure aggregation ----

// Rank r's k-th value: spread over [-12, 12], so some are clipped at ±8.
float secure_value(int r, std::size_t k) { return 12.0f * std::sin(0.37f * static_cast<float>(k) + 1.3f * r); }

// The secure sum equals the fixed-point sum of everyone's values (each rank
// knows them all here), bitwise, for sum and avg, at several sizes; a NaN is
// refused on every rank.
int secure(Communicator& comm) {
  SecureAggregator secure(comm);
  const int n = comm.size(), me = comm.rank();
  // 4094 and 4095: just under a mask chunk (4096 words), so chunks end unaligned.
  for (std::size_t count : {std::size_t{1}, std::size_t{1000}, std::size_t{4094}, std::size_t{4095}, std::size_t{300000}})
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
      std::vector<float> v(count), want(count);
      for (std::size_t k = 0; k < count; ++k) {
        v[k] = secure_value(me, k);
        std::uint32_t sum = 0;
        for (int r = 0; r < n; ++r) sum += secure.encode(secure_value(r, k));
        want[k] = secure.decode(sum, n, op);
      }
      const std::vector<float> input = v;
      secure.allreduce(std::span<float>(v), op);
      check(std::memcmp(v.data(), want.data(), count * sizeof(float)) == 0, "secure allreduce = fixed-point sum", me);
      std::vector<float> out(count);
      secure.allreduce(std::span<const float>(input), std::span<float>(out), op);
      check(std::memcmp(out.data(), want.data(), count * sizeof(float)) == 0, "out of place: the same bits", me);
      bool close = true;  // and that is the real sum of the clipped values, to n half-quanta (and float rounding)
      for (std::size_t k = 0; k < count; ++k) {
        double exact = 0;
        for (int r = 0; r < n; ++r) exact += std::clamp(secure_value(r, k), -8.0f, 8.0f);
        if (op == ReduceOp::avg) exact /= n;
        close = close && std::abs(v[k] - exact) <= n * 0.5 / secure.scale() + 1e-6 * (1 + std::abs(exact));
      }
      check(close, "secure allreduce = the sum of the clipped values, to the encoding's quantum", me);
    }
  // A NaN in one rank's input (the fused large path and the one-step small
  // path): an InputError on every rank, and the group goes on.
  for (std::size_t count : {std::size_t{1000}, std::size_t{300000}}) {
    std::vector<float> v(count, 1.0f);
    if (me == n - 1) v[count / 2] = std::nanf("");
    bool refused = false;
    try {
      secure.allreduce(std::span<float>(v));
    } catch (const InputError& e) {
      refused = std::strstr(e.what(), "the input of 1 rank(s) holds NaN") != nullptr;
    }
    check(refused, "a NaN in the last rank's input is an InputError on every rank", me);
    std::fill(v.begin(), v.end(), 1.0f);
    secure.allreduce(std::span<float>(v));
    check(v[count / 2] == static_cast<float>(n), "the secure allreduce after the NaN sums again", me);
  }
  if (failures == 0) std::printf("rank %d: secure sums exact\n", me);
  return failures ? 1 : 0;
}

// Whether any /dev/shm/dagr-* mapping of this process holds `run` consecutive copies of `word`.
bool shared_memory_holds(std::uint32_t word, std::size_t run) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/dev/shm/dagr-") == std::string::npos) continue;
    const auto begin = reinterpret_cast<const std::uint32_t*>(std::stoull(line.substr(0, line.find('-')), nullptr, 16));
    const auto end = reinterpret_cast<const std::uint32_t*>(
        std::stoull(line.substr(line.find('-') + 1, line.find(' ') - line.find('-') - 1), nullptr, 16));
    std::size_t same = 0;
    for (const std::uint32_t* p = begin; p < end; ++p)
      if ((same = *p == word ? same + 1 : 0) >= run) return true;
  }
  return false;
}

// Rank 1 contributes a constant; rank 0 then looks for it in the shared memory
// every rank writes to: a plain allreduce of the encodings leaves it there (the
// scan works), a secure one must not (neither the float nor its encoding).
int secure_scan(Communicator& comm) {
  SecureAggregator secure(comm);
  const int me = comm.rank();
  constexpr std::size_t kCount = 1 << 16;
  constexpr float kSecret = 1.2345f;
  const float mine = me == 1 ? kSecret : 0.25f * (me + 1);
  std::uint32_t float_bits;
  std::memcpy(&float_bits, &kSecret, 4);
  const std::uint32_t encoded = secure.encode(kSecret);
  for (int round = 0; round < 3; ++round) {
    std::vector<float> v(kCount, mine);
    secure.allreduce(std::span<float>(v));
    comm.barrier();
    if (me == 0) {
      check(!shared_memory_holds(encoded, 64) && !shared_memory_holds(float_bits, 64),
            "no rank's plain contribution in shared memory during secure allreduces", me);
    }
    comm.barrier();
  }
  std::vector<std::int32_t> plain(kCount, static_cast<std::int32_t>(secure.encode(mine)));
  comm.allreduce(std::span<std::int32_t>(plain));
  comm.barrier();
  if (me == 0) check(shared_memory_holds(encoded, 64), "the scan finds rank 1's encoding after a plain allreduce", me);
  comm.barrier();
  if (me == 0 && failures == 0) std::printf("secure allreduce: no plain contribution in shared memory (plain: found)\n");
  return failures ? 1 : 0;
}

// Rank 1 publishes one public key and uses another's secret key: every rank's
// result fails its checksum (an Error), none returns a wrong sum silently.
int secure_wrong_key(Communicator& comm) {
  std::optional<SecureKeyPair> keys;
  if (comm.rank() == 1) {
    keys = SecureKeyPair::generate();
    keys->secret_key = SecureKeyPair::generate().secret_key;
  }
  SecureAggregator secure(comm, {}, keys);
  std::vector<float> v(5000, 1.0f);
  try {
    secure.allreduce(std::span<float>(v));
  } catch (const Error& e) {
    if (std::string(e.what()).find("masks did not cancel") != std::string::npos) {
      std::printf("rank %d: wrong key detected\n", comm.rank());
      return 0;
    }
    throw;
  }
  std::fprintf(stderr, "rank %d: FAILED: a wrong key went unnoticed\n", comm.rank());
  return 1;
}

// How many processes of our launcher wait as spares (named dagr-standby, standby.h).
int spares_waiting() {
  int n = 0;
  const std::string parent = std::to_string(getppid());
  if (DIR* proc = opendir("/proc")) {
    while (const dirent* e = readdir(proc)) {
      std::ifstream stat(std::string("/proc/") + e->d_name + "/stat");
      std::string pid, comm, state, ppid;
      if (stat >> pid >> comm >> state >> ppid && comm == "(dagr-standby)" && ppid == parent) ++n;
    }
    closedir(proc);
  }
  return n;
}

// Every process the launcher has started (workers and spares, also ones not yet exec'd).
int launcher_children() {
  int n = 0;
  const std::string parent = std::to_string(getppid());
  if (DIR* proc = opendir("/proc")) {
    while (const dirent* e = readdir(proc)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;  // not /proc/self, /proc/thread-self
      std::ifstream stat(std::string("/proc/") + e->d_name + "/stat");
      std::string pid, comm, state, ppid;
      if (stat >> pid >> comm >> state >> ppid && ppid == parent) ++n;
    }
    closedir(proc);
  }
  return n;
}

// The CPUs this thread may run on, as "0,1".
std::string cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  std::string out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) {
      if (!out.empty()) out += ',';
      out += std::to_string(c);
    }
  return out;
}

int standby(const std::string& mode) {
  if (!wait_until_started()) return 0;
  const char* world_size = std::getenv("WORLD_SIZE");
  const bool first = std::getenv("DAGR_RESTART_COUNT") && std::string(std::getenv("DAGR_RESTART_COUNT")) == "0";
  // Spares start once every rank has joined: before this one joins there can be none.
  if (first && world_size && launcher_children() > std::atoi(world_size)) {
    std::fprintf(stderr, "FAILED: a spare was started before every rank joined\n");
    return 1;
  }
  Communicator comm = Communicator::from_env();
  const char* attempt = std::getenv("DAGR_RESTART_COUNT") ? std::getenv("DAGR_RESTART_COUNT") : "none";
  if (std::string(attempt) == "0") {
    for (int i = 0; i < 200 && spares_waiting() < comm.size(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (mode == "die" && comm.rank() == comm.size() - 1) raise(SIGKILL);
    if (mode == "linger") std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  comm.barrier();
  std::printf("rank %d attempt %s pid %d cpus %s\n", comm.rank(), attempt, static_cast<int>(getpid()), cpus().c_str());
  return 0;
}

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  if (scenario == "steps" && argc > 2) return steps(std::atof(argv[2]), argc > 3 && std::string(argv[3]) == "split");
  if (scenario == "print-sleep-print") return print_sleep_print();
  try {
    if (scenario == "standby") return standby(argc > 2 ? argv[2] : "");
    if (scenario == "die-unjoined" && std::getenv("RANK") && std::getenv("WORLD_SIZE") &&
        std::atoi(std::getenv("RANK")) == std::atoi(std::getenv("WORLD_SIZE")) - 1)
      raise(SIGKILL);
    Communicator comm = Communicator::from_env();
    if (scenario == "die-unjoined") {
      comm.barrier();  // waits for the rank that never joins, until the launcher stops it
      return 0;
    }
    if (scenario == "exit-late") {
      comm.barrier();
      if (comm.rank() != comm.size() - 1) return 0;
      std::this_thread::sleep_for(std::chrono::seconds(1));
      return 3;
    }
    if (scenario == "collectives") return collectives(comm);
    if (scenario == "mismatch") return mismatch(comm);
    if (scenario == "die") return die(comm);
    if (scenario == "secure") return secure(comm);
    if (scenario == "secure-scan") return secure_scan(comm);
    if (scenario == "secure-wrong-key") return secure_wrong_key(comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_worker: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: comm_worker collectives|mismatch|die|exit-late|die-unjoined|steps SECONDS [split]|print-sleep-print|standby [die]|secure|secure-scan|secure-wrong-key\n");
  return 2;
}
