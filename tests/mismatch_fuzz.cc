// A seeded fuzzer for the collective contract: random programs of collectives,
// with one random deviation on a random subset of ranks, run with ranks as
// threads and as real processes (fork), N = 2..4.
//
//   mismatch_fuzz [--seed S] [--trials N] [--first T] [--mode threads|processes|both]
//
// Trial t draws from (S, t) alone, so `--seed S --first t --trials 1` replays it.
// A trial is a program of 1..4 collectives (kind, dtype, count, op, root; in
// place or not, blocking or async, chosen per rank). Then one deviation, applied
// to a non-empty strict subset of the ranks: a different op, dtype, count,
// root or kind at one call, a skipped call, two calls swapped; or none.
//
// What must happen follows from the ranks' programs. With fields the contract
// ignores set aside (the op of a broadcast, the root of an allreduce), let d be
// the first call at which the ranks' programs differ. Every call before d gives
// the correct result on every rank. At d, every rank that makes a call d raises:
// a MismatchError when every rank makes one; when some rank's program ended
// (it skipped a call), a PeerError or TimeoutError (calls from d on then carry a
// short timeout, and half the time a rank that has finished lingers instead of
// leaving, so that the others time out) — or a MismatchError when those who are
// there disagree too. A rank whose program ends before d finishes cleanly. After
// an error the communicator refuses the next call at once. Any other outcome —
// a hang (bounded by a watchdog), a crash, a wrong value, a missing or wrong
// error — fails the run and prints the seed and trial that replay it.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dagr/comm/communicator.h"
#include "dagr/error.h"

using namespace dagr;
using namespace std::chrono_literals;

namespace {

constexpr auto kCallTimeout = 30s;     // calls before the divergence, and joining
constexpr auto kShortTimeout = 300ms;  // calls from the divergence on, in trials with a skipped call
constexpr auto kTrialLimit = 60s;      // longer than this is a hang
constexpr int kMaxRanks = 4;

// ---- the programs ----

struct Call {
  OpKind kind = OpKind::barrier;
  DType dtype = DType::float32;
  ReduceOp op = ReduceOp::sum;
  std::size_t count = 0;
  int root = 0;
};

bool reducing(OpKind k) { return k == OpKind::allreduce || k == OpKind::reduce || k == OpKind::reduce_scatter; }
bool rooted(OpKind k) { return k == OpKind::reduce || k == OpKind::broadcast; }

// Equal when the contract sees the same call: the fields a kind ignores do not count.
bool same_call(const Call& a, const Call& b) {
  if (a.kind != b.kind) return false;
  if (a.kind == OpKind::barrier) return true;
  return a.dtype == b.dtype && a.count == b.count && (!reducing(a.kind) || a.op == b.op) &&
         (!rooted(a.kind) || a.root == b.root);
}

std::string describe(const Call& c) {
  std::string s(name(c.kind));
  if (c.kind == OpKind::barrier) return s + "()";
  s += "(";
  if (reducing(c.kind)) s += std::string(name(c.op)) + ", ";
  s += std::string(name(c.dtype)) + ", count=" + std::to_string(c.count);
  if (rooted(c.kind)) s += ", root=" + std::to_string(c.root);
  return s + ")";
}

enum class Deviation { none, op, dtype, count, root, kind, skip, order };
const char* name(Deviation d) {
  static const char* names[] = {"none", "op", "dtype", "count", "root", "kind", "skip", "order"};
  return names[static_cast<int>(d)];
}

struct Trial {
  std::uint64_t seed = 0;  // this trial's own seed: data and per-rank choices derive from it
  int size = 2;
  Deviation deviation = Deviation::none;
  std::vector<std::vector<Call>> programs;  // per rank
  int diverge = -1;                         // first call at which programs differ; -1: never
  bool linger = false;                      // ranks whose program ended wait for the others

  bool takes_part(int rank) const { return diverge >= 0 && static_cast<int>(programs[rank].size()) > diverge; }
  bool everyone_takes_part() const {
    for (int r = 0; r < size; ++r)
      if (!takes_part(r)) return false;
    return true;
  }
};

std::uint64_t mix(std::uint64_t a, std::uint64_t b) {  // splitmix64 of a combination
  std::uint64_t z = a * 0x9e3779b97f4a7c15ull + b + 0x632be59bd9b4e5b9ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(std::uint64_t seed) : gen(seed) {}
  int below(int n) { return static_cast<int>(gen() % static_cast<std::uint64_t>(n)); }
  bool coin() { return below(2) == 1; }
};

constexpr OpKind kKinds[] = {OpKind::barrier, OpKind::allreduce, OpKind::reduce, OpKind::broadcast,
                             OpKind::allgather, OpKind::reduce_scatter};
constexpr DType kDtypes[] = {DType::float32, DType::float64, DType::float16, DType::bfloat16,
                             DType::int32, DType::int64, DType::uint8};
constexpr ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::min, ReduceOp::max, ReduceOp::prod};

// Counts across both shared-memory paths: empty, one step (<= 64 KiB), pipelined over segments.
std::size_t random_count(Rng& rng) {
  const int bucket = rng.below(10);
  if (bucket == 0) return 0;
  if (bucket <= 6) return 1 + rng.below(100);
  if (bucket <= 8) return 1000 + rng.below(20000);
  return 20000 + rng.below(130000);
}

Call random_call(Rng& rng, int size) {
  return Call{kKinds[rng.below(6)], kDtypes[rng.below(7)], kOps[rng.below(5)], random_count(rng), rng.below(size)};
}

template <class T, std::size_t N>
T other_than(Rng& rng, const T (&choices)[N], T now) {
  T next = now;
  while (next == now) next = choices[rng.below(static_cast<int>(N))];
  return next;
}

int first_difference(const std::vector<std::vector<Call>>& programs) {
  std::size_t longest = 0;
  for (const auto& p : programs) longest = std::max(longest, p.size());
  for (std::size_t i = 0; i < longest; ++i)
    for (const auto& p : programs)
      if (i >= p.size() || !same_call(p[i], programs[0][i])) return static_cast<int>(i);
  return -1;
}

Trial make_trial(std::uint64_t seed, std::uint64_t index) {
  Trial t;
  t.seed = mix(seed, index);
  Rng rng(t.seed);
  t.size = 2 + rng.below(kMaxRanks - 1);
  std::vector<Call> program(static_cast<std::size_t>(1 + rng.below(4)));
  for (Call& c : program) c = random_call(rng, t.size);
  t.deviation = static_cast<Deviation>(rng.below(8));
  // Some draws change nothing the contract sees (swapping two equal calls):
  // draw again a few times, then take what came.
  for (int attempt = 0; attempt < 8; ++attempt) {
    t.programs.assign(static_cast<std::size_t>(t.size), program);
    if (t.deviation == Deviation::none) break;
    const int mask = 1 + rng.below((1 << t.size) - 2);  // a non-empty strict subset
    const int at = rng.below(static_cast<int>(program.size()));
    Call changed = program[static_cast<std::size_t>(at)];
    switch (t.deviation) {
      case Deviation::op: changed.op = other_than(rng, kOps, changed.op); break;
      case Deviation::dtype: changed.dtype = other_than(rng, kDtypes, changed.dtype); break;
      case Deviation::count: changed.count = changed.count + 1 + rng.below(3); break;
      case Deviation::root: changed.root = (changed.root + 1 + rng.below(t.size - 1)) % t.size; break;
      case Deviation::kind: changed.kind = other_than(rng, kKinds, changed.kind); break;
      default: break;
    }
    for (int r = 0; r < t.size; ++r) {
      if (!(mask >> r & 1)) continue;
      auto& p = t.programs[static_cast<std::size_t>(r)];
      if (t.deviation == Deviation::skip) p.erase(p.begin() + at);
      else if (t.deviation == Deviation::order) std::swap(p[at], p[(at + 1) % p.size()]);
      else p[static_cast<std::size_t>(at)] = changed;
    }
    if (first_difference(t.programs) >= 0) break;
  }
  t.diverge = first_difference(t.programs);
  t.linger = t.deviation == Deviation::skip && rng.coin();
  return t;
}

// ---- running one rank ----

// What a rank reports back; plain data, so that a forked rank can write it into shared memory.
struct Outcome {
  int failed_at = -1;    // the call that raised; -1: none did
  char error = '-';      // M mismatch, P peer, T timeout, E other dagr::Error, X other exception
  int wrong_at = -1;     // the first call whose result was wrong
  bool refused_after = true;  // after an error, the next call raised at once
  bool finished = false;
  char message[240] = {};
};

// Rank r's input at call i, element e: 1, 2 or 3, exact in every dtype, so that
// sums and products of up to four ranks are exact and the order cannot matter.
double input(int rank, int call, std::size_t e) {
  return static_cast<double>(1 + (static_cast<std::size_t>(rank) * 7 + static_cast<std::size_t>(call) * 3 + e * 5 + e / 3) % 3);
}

template <class T>
std::vector<T> inputs(int rank, int call, std::size_t count, std::size_t offset = 0) {
  std::vector<T> v(count);
  for (std::size_t e = 0; e < count; ++e) v[e] = element_from_double<T>(input(rank, call, offset + e));
  return v;
}

// The reduction of every rank's input element e, computed as the kernels do (float for 16-bit types).
template <class T>
T expected_reduction(ReduceOp op, int size, int call, std::size_t e) {
  using A = std::conditional_t<std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>, float, T>;
  A acc = static_cast<A>(input(0, call, e));
  for (int p = 1; p < size; ++p) {
    const A x = static_cast<A>(input(p, call, e));
    switch (op) {
      case ReduceOp::sum: case ReduceOp::avg: acc = static_cast<A>(acc + x); break;
      case ReduceOp::prod: acc = static_cast<A>(acc * x); break;
      case ReduceOp::min: acc = std::min(acc, x); break;
      case ReduceOp::max: acc = std::max(acc, x); break;
    }
  }
  if (op == ReduceOp::avg) acc = static_cast<A>(acc / static_cast<A>(size));
  return static_cast<T>(acc);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Runs call i of this rank's program; returns whether its result is right (where it has one here).
template <class T>
bool run_call(Communicator& comm, const Call& c, int call, bool in_place, bool async, CallOptions o) {
  const int me = comm.rank(), n = comm.size();
  const std::size_t count = c.count;
  auto finish = [async](Work w) { if (async) w.wait(); };
  auto reduced = [&](std::size_t offset) {
    std::vector<T> v(count);
    for (std::size_t e = 0; e < count; ++e) v[e] = expected_reduction<T>(c.op, n, call, offset + e);
    return v;
  };
  switch (c.kind) {
    case OpKind::allreduce: {
      std::vector<T> data = inputs<T>(me, call, count), out(count);
      if (in_place) {
        if (async) finish(comm.allreduce_async(std::span<T>(data), c.op, o));
        else comm.allreduce(std::span<T>(data), c.op, o);
        return same_bits(data, reduced(0));
      }
      if (async) finish(comm.allreduce_async(std::span<const T>(data), std::span<T>(out), c.op, o));
      else comm.allreduce(std::span<const T>(data), std::span<T>(out), c.op, o);
      return same_bits(out, reduced(0));
    }
    case OpKind::reduce: {
      std::vector<T> data = inputs<T>(me, call, count);
      if (async) finish(comm.reduce_async(std::span<T>(data), c.root, c.op, o));
      else comm.reduce(std::span<T>(data), c.root, c.op, o);
      return me != c.root || same_bits(data, reduced(0));
    }
    case OpKind::broadcast: {
      std::vector<T> data = inputs<T>(me, call, count);
      if (async) finish(comm.broadcast_async(std::span<T>(data), c.root, o));
      else comm.broadcast(std::span<T>(data), c.root, o);
      return same_bits(data, inputs<T>(c.root, call, count));
    }
    case OpKind::allgather: {
      std::vector<T> mine = inputs<T>(me, call, count), all(count * static_cast<std::size_t>(n));
      std::copy(mine.begin(), mine.end(), all.begin() + static_cast<std::ptrdiff_t>(count * me));
      if (in_place && !async) comm.allgather(std::span<T>(all), o);
      else if (async) finish(comm.allgather_async(std::span<const T>(mine), std::span<T>(all), o));
      else comm.allgather(std::span<const T>(mine), std::span<T>(all), o);
      std::vector<T> want;
      for (int p = 0; p < n; ++p) {
        const auto block = inputs<T>(p, call, count);
        want.insert(want.end(), block.begin(), block.end());
      }
      return same_bits(all, want);
    }
    case OpKind::reduce_scatter: {
      std::vector<T> blocks = inputs<T>(me, call, count * static_cast<std::size_t>(n)), out(count);
      if (in_place && !async) {
        comm.reduce_scatter(std::span<T>(blocks), c.op, o);
        const auto mine = blocks.begin() + static_cast<std::ptrdiff_t>(count * me);
        out.assign(mine, mine + static_cast<std::ptrdiff_t>(count));
      } else if (async) {
        finish(comm.reduce_scatter_async(std::span<const T>(blocks), std::span<T>(out), c.op, o));
      } else {
        comm.reduce_scatter(std::span<const T>(blocks), std::span<T>(out), c.op, o);
      }
      return same_bits(out, reduced(count * static_cast<std::size_t>(me)));
    }
    case OpKind::barrier:
      if (async) finish(comm.barrier_async(o));
      else comm.barrier(o);
      return true;
    default: return false;
  }
}

bool run_call(Communicator& comm, const Call& c, int call, bool in_place, bool async, CallOptions o) {
  switch (c.dtype) {
    case DType::float32: return run_call<float>(comm, c, call, in_place, async, o);
    case DType::float64: return run_call<double>(comm, c, call, in_place, async, o);
    case DType::float16: return run_call<Half>(comm, c, call, in_place, async, o);
    case DType::bfloat16: return run_call<BFloat16>(comm, c, call, in_place, async, o);
    case DType::int32: return run_call<std::int32_t>(comm, c, call, in_place, async, o);
    case DType::int64: return run_call<std::int64_t>(comm, c, call, in_place, async, o);
    case DType::uint8: return run_call<std::uint8_t>(comm, c, call, in_place, async, o);
  }
  return false;
}

// Shared by the ranks of a trial (in memory shared across fork for processes).
struct Board {
  Outcome outcomes[kMaxRanks];
  std::atomic<int> finished{0};  // ranks done with their program
};

void record(Outcome& out, int call, char kind, const char* what) {
  out.failed_at = call;
  out.error = kind;
  std::snprintf(out.message, sizeof out.message, "%s", what);
}

void run_rank(const Trial& t, int rank, Communicator& comm, Board& board) {
  Outcome& out = board.outcomes[rank];
  const auto& program = t.programs[static_cast<std::size_t>(rank)];
  Rng choices(mix(t.seed, 1000 + static_cast<std::uint64_t>(rank)));
  for (std::size_t i = 0; i < program.size(); ++i) {
    const int call = static_cast<int>(i);
    const bool short_wait = t.deviation == Deviation::skip && t.diverge >= 0 && call >= t.diverge;
    const CallOptions o{.timeout = short_wait ? std::chrono::milliseconds(kShortTimeout) : std::chrono::milliseconds(kCallTimeout)};
    const bool in_place = choices.coin(), async = choices.coin();
    try {
      if (!run_call(comm, program[i], call, in_place, async, o) && out.wrong_at < 0) out.wrong_at = call;
    } catch (const MismatchError& e) {
      record(out, call, 'M', e.what());
    } catch (const PeerError& e) {
      record(out, call, 'P', e.what());
    } catch (const TimeoutError& e) {
      record(out, call, 'T', e.what());
    } catch (const Error& e) {
      record(out, call, 'E', e.what());
    } catch (const std::exception& e) {
      record(out, call, 'X', e.what());
    }
    if (out.failed_at >= 0) {
      const auto start = std::chrono::steady_clock::now();
      try {
        comm.barrier({.timeout = std::chrono::milliseconds(kCallTimeout)});
        out.refused_after = false;
      } catch (const Error&) {
        out.refused_after = std::chrono::steady_clock::now() - start < 1s;
      }
      break;
    }
  }
  out.finished = true;
  board.finished.fetch_add(1);
  if (t.linger && out.failed_at < 0) {  // stay in the group until the others are done (bounded)
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (board.finished.load() < t.size && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(1ms);
  }
}

void run_rank_guarded(const Trial& t, const std::string& job, int rank, Board& board) {
  try {
    Communicator comm = Communicator::join({.job = job, .rank = rank, .size = t.size, .timeout = kCallTimeout});
    run_rank(t, rank, comm, board);
  } catch (const std::exception& e) {  // joining failed
    record(board.outcomes[rank], -2, 'J', e.what());
    board.finished.fetch_add(1);
  }
}

// ---- running a trial ----

// The ranks of a trial run as processes, for the watchdog to kill.
std::atomic<pid_t> children[kMaxRanks];

// Ends the whole run when a trial takes longer than kTrialLimit: a hang.
class Watchdog {
 public:
  Watchdog() : thread_([this] { watch(); }) {}
  ~Watchdog() {
    { std::lock_guard lock(mutex_); stop_ = true; }
    cv_.notify_all();
    thread_.join();
  }
  void start(const std::string& what) {
    std::lock_guard lock(mutex_);
    what_ = what;
    deadline_ = std::chrono::steady_clock::now() + kTrialLimit;
  }
  void stop() {
    std::lock_guard lock(mutex_);
    deadline_.reset();
  }

 private:
  void watch() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      cv_.wait_for(lock, 200ms);
      if (deadline_ && std::chrono::steady_clock::now() > *deadline_) {
        std::fprintf(stderr, "HANG: %s ran past %llds\n", what_.c_str(), static_cast<long long>(kTrialLimit.count()));
        std::fflush(stderr);
        for (auto& pid : children)
          if (const pid_t p = pid.load(); p > 0) kill(p, SIGKILL);
        _exit(3);
      }
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  std::string what_;
  std::thread thread_;
};

void run_as_threads(const Trial& t, const std::string& job, Board& board) {
  std::vector<std::thread> threads;
  for (int r = 0; r < t.size; ++r) threads.emplace_back([&, r] { run_rank_guarded(t, job, r, board); });
  for (auto& th : threads) th.join();
}

// Returns "" or what went wrong with the processes themselves (a crash, a non-zero exit).
std::string run_as_processes(const Trial& t, const std::string& job, Board& board) {
  std::vector<pid_t> pids;
  for (int r = 0; r < t.size; ++r) {
    const pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
      run_rank_guarded(t, job, r, board);
      std::fflush(nullptr);
      _exit(0);
    }
    pids.push_back(pid);
    children[r].store(pid);
  }
  std::string problems;
  for (int r = 0; r < t.size; ++r) {
    int status = 0;
    waitpid(pids[static_cast<std::size_t>(r)], &status, 0);  // bounded by the watchdog
    children[r].store(0);
    if (WIFSIGNALED(status))
      problems += "rank " + std::to_string(r) + " was killed by signal " + std::to_string(WTERMSIG(status)) + "; ";
    else if (WEXITSTATUS(status) != 0)
      problems += "rank " + std::to_string(r) + " exited with status " + std::to_string(WEXITSTATUS(status)) + "; ";
  }
  return problems;
}

// The rank a MismatchError message names after "but rank ", or -1.
int other_rank_named(const char* message) {
  const char* at = std::strstr(message, "but rank ");
  return at ? std::atoi(at + 9) : -1;
}

// Checks one rank's outcome against what the trial's programs require; "" when it holds.
std::string judge(const Trial& t, int r, const Outcome& o) {
  if (!o.finished && o.error != 'J') return "did not finish";
  if (o.error == 'J') return std::string("could not join: ") + o.message;
  const int d = t.diverge;
  if (o.wrong_at >= 0 && (d < 0 || o.wrong_at < d)) return "wrong result at call " + std::to_string(o.wrong_at);
  if (!t.takes_part(r)) {
    if (o.failed_at >= 0) return "raised at call " + std::to_string(o.failed_at) + " where none was due: " + o.message;
    return "";
  }
  if (o.failed_at < 0) return "no error at call " + std::to_string(d) + ", where programs differ";
  if (o.failed_at != d)
    return "raised at call " + std::to_string(o.failed_at) + ", not " + std::to_string(d) + ": " + o.message;
  const bool everyone = t.everyone_takes_part();
  if (everyone && o.error != 'M') return std::string("not a MismatchError: ") + o.message;
  if (!everyone && o.error != 'M' && o.error != 'P' && o.error != 'T')
    return std::string("not a MismatchError, PeerError or TimeoutError: ") + o.message;
  if (o.error == 'M') {
    const int other = other_rank_named(o.message);
    const auto& mine = t.programs[static_cast<std::size_t>(r)];
    if (other < 0 || other >= t.size || other == r) return std::string("names no other rank: ") + o.message;
    const auto& theirs = t.programs[static_cast<std::size_t>(other)];
    if (static_cast<int>(theirs.size()) > d && same_call(theirs[d], mine[d]))
      return std::string("blames a rank that made the same call: ") + o.message;
  }
  if (!o.refused_after) return "the communicator took a call after its error";
  return "";
}

void print_trial(const Trial& t, std::uint64_t index, bool processes) {
  std::fprintf(stderr, "  trial %llu (%s, %d ranks, deviation %s%s), programs differ at call %d:\n",
               static_cast<unsigned long long>(index), processes ? "processes" : "threads", t.size, name(t.deviation),
               t.linger ? ", lingering" : "", t.diverge);
  for (int r = 0; r < t.size; ++r) {
    std::string line;
    for (const Call& c : t.programs[static_cast<std::size_t>(r)]) line.append(" ").append(describe(c));
    std::fprintf(stderr, "    rank %d:%s\n", r, line.c_str());
  }
}

struct Options {
  std::uint64_t seed = 0;
  bool seeded = false;
  std::uint64_t trials = 300;
  std::uint64_t first = 0;
  std::string mode = "both";
};

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr, "mismatch_fuzz: %s\nusage: mismatch_fuzz [--seed S] [--trials N] [--first T] [--mode threads|processes|both]\n",
               problem.c_str());
  std::exit(2);
}

std::uint64_t number(const char* text, const char* flag) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-') usage(std::string(flag) + " wants a non-negative integer, not '" + text + "'");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " wants a value");
    const char* value = argv[++i];
    if (flag == "--seed") o.seed = number(value, "--seed"), o.seeded = true;
    else if (flag == "--trials") o.trials = number(value, "--trials");
    else if (flag == "--first") o.first = number(value, "--first");
    else if (flag == "--mode") o.mode = value;
    else usage("unknown option " + flag);
  }
  if (o.trials == 0) usage("--trials wants at least 1");
  if (o.mode != "threads" && o.mode != "processes" && o.mode != "both") usage("--mode is threads, processes or both, not " + o.mode);
  if (!o.seeded) o.seed = std::random_device{}() ^ (static_cast<std::uint64_t>(std::random_device{}()) << 32);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  std::printf("mismatch_fuzz: seed %llu, trials %llu..%llu, mode %s\n", static_cast<unsigned long long>(opt.seed),
              static_cast<unsigned long long>(opt.first), static_cast<unsigned long long>(opt.first + opt.trials - 1),
              opt.mode.c_str());
  std::fflush(stdout);
  // Outcomes live in shared memory so that forked ranks can write them.
  void* shared = mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) {
    std::perror("mismatch_fuzz: mmap");
    return 1;
  }
  Watchdog watchdog;
  int failures = 0, correct = 0;
  int errors[128] = {};
  const auto start = std::chrono::steady_clock::now();
  for (std::uint64_t i = opt.first; i < opt.first + opt.trials; ++i) {
    const Trial t = make_trial(opt.seed, i);
    const bool processes = opt.mode == "processes" || (opt.mode == "both" && i % 2 == 1);
    Board* board = new (shared) Board();
    const std::string job = "fuzz-" + std::to_string(getpid()) + "-" + std::to_string(i);
    watchdog.start("trial " + std::to_string(i) + " of seed " + std::to_string(opt.seed));
    std::string crashed;
    if (processes) crashed = run_as_processes(t, job, *board);
    else run_as_threads(t, job, *board);
    watchdog.stop();
    std::vector<std::string> verdicts;
    bool ok = crashed.empty();
    for (int r = 0; r < t.size; ++r) {
      verdicts.push_back(judge(t, r, board->outcomes[r]));
      ok = ok && verdicts.back().empty();
    }
    if (ok) {
      if (t.diverge < 0) ++correct;
      for (int r = 0; r < t.size; ++r)
        if (board->outcomes[r].failed_at >= 0) ++errors[static_cast<unsigned char>(board->outcomes[r].error)];
      continue;
    }
    ++failures;
    std::fprintf(stderr, "FAILED: replay with mismatch_fuzz --seed %llu --first %llu --trials 1\n",
                 static_cast<unsigned long long>(opt.seed), static_cast<unsigned long long>(i));
    print_trial(t, i, processes);
    if (!crashed.empty()) std::fprintf(stderr, "    processes: %s\n", crashed.c_str());
    for (int r = 0; r < t.size; ++r)
      if (!verdicts[static_cast<std::size_t>(r)].empty())
        std::fprintf(stderr, "    rank %d: %s\n", r, verdicts[static_cast<std::size_t>(r)].c_str());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu trials in %.1f s: %d correct results, errors as required: %d MismatchError, %d PeerError, "
              "%d TimeoutError; %d failed (seed %llu)\n",
              static_cast<unsigned long long>(opt.trials), seconds, correct, errors['M'], errors['P'], errors['T'],
              failures, static_cast<unsigned long long>(opt.seed));
  return failures == 0 ? 0 : 1;
}
