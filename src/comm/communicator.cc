#include "dagr/comm/communicator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <vector>

#include "allreduce_transform.h"
#include "backend.h"
#include "dagr/comm/shared_buffer.h"
#include "dagr/error.h"
#include "env_timeout.h"
#include "executor.h"
#include "log.h"
#include "shm/shm_backend.h"
#ifdef DAGR_HAVE_MPI
#include "hier/hier_backend.h"
#include "mpi/mpi_backend.h"
#endif

namespace dagr {
namespace detail {

// Everything behind a Communicator handle.
struct CommState {
  std::unique_ptr<Backend> backend;
  std::chrono::milliseconds timeout;
  int splits = 0;
  std::atomic<bool> failed{false};  // set by the first failed call: the group is then unusable
  std::mutex failure_mutex;
  std::string failure;              // what that call raised
  // Three queues, each in issue order: collectives, sends, receives. Messages
  // progress beside collectives and beside each other, so a send_async and a
  // recv of a message larger than the channel cannot wait on one another.
  // Declared last: joined first, while the rest still exists.
  Executor collectives, sends, recvs;

  Executor& queue_for(OpKind kind) {
    return kind == OpKind::send ? sends : kind == OpKind::recv ? recvs : collectives;
  }

  // Runs one request: refuses after an earlier failure, records a new one.
  void execute(const Request& r) {
    guarded([&] {
      // DAGR_LOG_LEVEL=debug: one line per call, with its time on this rank.
      const bool timed = log::enabled(log::Level::debug);
      const auto start = timed ? Clock::now() : Clock::time_point{};
      if (r.transform && !backend->fuses_transforms())
        run_unfused(*backend, r);
      else
        backend->run(r);
      if (timed)
        DAGR_LOG_DEBUG("{} on {} rank {}/{}: {:.1f} us", Fingerprint::of(r).describe(), backend->name(),
                       backend->rank(), backend->size(),
                       std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    });
  }

  // Runs r on the calling thread, once the calls queued before it are done.
  void run_now(Request r) {
    queue_for(r.kind).run_inline([&] {
      r.deadline = Clock::now() + r.timeout;
      execute(r);
    });
  }

  // Runs f, a step every rank takes together: refuses after an earlier
  // failure, records a new one.
  template <class F>
  void guarded(F&& f) {
    if (failed.load(std::memory_order_acquire)) {
      std::lock_guard lock(failure_mutex);
      throw Error(concat("communicator unusable after an earlier failure: ", failure));
    }
    try {
      f();
    } catch (const InputError&) {
      throw;  // caught before anything was exchanged: the group is still in step
    } catch (const std::exception& e) {
      std::lock_guard lock(failure_mutex);
      if (!failed.load()) failure = e.what();
      failed.store(true, std::memory_order_release);
      throw;
    }
  }
};

Communicator make_communicator(std::unique_ptr<Backend> backend, std::chrono::milliseconds timeout) {
  auto state = std::make_shared<CommState>();
  state->backend = std::move(backend);
  state->timeout = timeout;
  DAGR_LOG_INFO("dagr {} joined: rank {} of {} on {}, timeout {} ms", log::version(), state->backend->rank(),
                state->backend->size(), state->backend->name(), timeout.count());
  return Communicator(std::move(state));
}

}  // namespace detail

namespace {

long parse_env_int(const char* name, long min, long max) {
  const char* text = std::getenv(name);
  DAGR_ENFORCE(text, InputError, "environment variable ", name, " is not set");
  DAGR_ENFORCE(*text, InputError, "environment variable ", name, " is empty (a whole number in [", min, ", ", max,
               "])");
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  DAGR_ENFORCE(*end == '\0' && v >= min && v <= max, InputError, "environment variable ", name,
               "='", text, "' is not a whole number in [", min, ", ", max, "]");
  return v;
}

void check_job_id(const std::string& job) {
  DAGR_ENFORCE(!job.empty() && job.size() <= 64 &&
                   std::all_of(job.begin(), job.end(),
                               [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }),
               InputError, "job id '", job, "' must be 1-64 letters, digits, '-' or '_'");
}

using detail::kMaxRanks;  // of one shared-memory group (shm/layout.h)

}  // namespace

Communicator::Communicator(std::shared_ptr<detail::CommState> state) : state_(std::move(state)) {}

Communicator::Communicator() : state_(std::make_shared<detail::CommState>()) {
  state_->backend = detail::ShmBackend::solo();
  state_->timeout = std::chrono::minutes(5);
}

Communicator Communicator::join(const ShmJoin& how) {
  log::configure_from_env();
  check_job_id(how.job);
  DAGR_ENFORCE(how.size >= 1 && how.size <= kMaxRanks, InputError, "world size ", how.size,
               " is outside [1, ", kMaxRanks, "]");
  return detail::make_communicator(
      detail::ShmBackend::join("/dagr-" + how.job, how.rank, how.size, detail::Clock::now() + how.timeout),
      how.timeout);
}

namespace {

// "shm", "mpi" or "hier": DAGR_BACKEND, else mpi when an MPI launcher started us.
std::string chosen_backend() {
  if (const char* b = std::getenv("DAGR_BACKEND"); b && *b) {
    const std::string name = b;
    DAGR_ENFORCE(name == "shm" || name == "mpi" || name == "hier", InputError, "DAGR_BACKEND='", name,
                 "' is not shm, mpi or hier");
    return name;
  }
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return "mpi";
  return "shm";
}

}  // namespace

std::chrono::milliseconds detail::timeout_from_env() {
  if (!std::getenv("DAGR_TIMEOUT_S")) return std::chrono::minutes(5);
  return std::chrono::seconds(parse_env_int("DAGR_TIMEOUT_S", 1, 86400 * 7));
}

bool Communicator::mpi_available() {
#ifdef DAGR_HAVE_MPI
  return true;
#else
  return false;
#endif
}

Communicator Communicator::from_env() {
  log::configure_from_env();
  const std::string backend = chosen_backend();
  const auto timeout = detail::timeout_from_env();
  if (backend != "shm") {
#ifdef DAGR_HAVE_MPI
    std::unique_ptr<detail::Backend> world =
        std::make_unique<detail::MpiBackend>(detail::MpiRuntime::get(), MPI_COMM_WORLD, detail::Clock::now() + timeout);
    if (backend == "hier")
      world = std::make_unique<detail::HierBackend>(std::move(world), detail::Clock::now() + timeout);
    return detail::make_communicator(std::move(world), timeout);
#else
    throw InputError(detail::concat("backend '", backend, "' needs MPI, and this dagr was built without it "
                                    "(install libopenmpi-dev and rebuild)"));
#endif
  }
  if (!std::getenv("WORLD_SIZE")) return Communicator();
  ShmJoin how;
  how.size = static_cast<int>(parse_env_int("WORLD_SIZE", 1, kMaxRanks));
  how.rank = static_cast<int>(parse_env_int("RANK", 0, how.size - 1));
  how.timeout = timeout;
  const char* job = std::getenv("DAGR_JOB_ID");
  if (how.size == 1 && !job) return Communicator();
  DAGR_ENFORCE(job, InputError,
               "WORLD_SIZE is set but DAGR_JOB_ID is not: start the workers with `dagr launch` or mpirun");
  how.job = job;
  check_job_id(how.job);
  // The launcher's own world: a rank that never joins is reported to it by number.
  return detail::make_communicator(
      detail::ShmBackend::join("/dagr-" + how.job, how.rank, how.size, detail::Clock::now() + how.timeout, true),
      how.timeout);
}

int Communicator::rank() const { return state_->backend->rank(); }
int Communicator::size() const { return state_->backend->size(); }
std::chrono::milliseconds Communicator::timeout() const { return state_->timeout; }
void Communicator::set_timeout(std::chrono::milliseconds timeout) { state_->timeout = timeout; }
std::string Communicator::backend_name() const { return std::string(state_->backend->name()); }

SharedBuffer Communicator::allocate_shared(std::size_t bytes) {
  // Every rank must ask for the same size: the largest and the smallest asked.
  std::array<std::int64_t, 2> asked{static_cast<std::int64_t>(bytes), -static_cast<std::int64_t>(bytes)};
  allreduce(std::span<std::int64_t>(asked), ReduceOp::max);
  DAGR_ENFORCE(asked[0] == -asked[1], MismatchError, "allocate_shared: the ranks asked for different sizes, from ",
               -asked[1], " to ", asked[0], " bytes (rank ", rank(), ": ", bytes, ")");
  SharedBuffer made;
  state_->collectives.run_inline([&] {
    state_->guarded([&] { made = state_->backend->allocate(bytes, detail::Clock::now() + state_->timeout); });
  });
  return made;
}

void Communicator::check_sizes(std::size_t expected, std::size_t got, const char* what) const {
  DAGR_ENFORCE(expected == got, InputError, what, ": the buffer holds ", got,
               " elements but this call needs ", expected);
}

std::size_t Communicator::block_of(std::size_t total, const char* what) const {
  const auto n = static_cast<std::size_t>(size());
  DAGR_ENFORCE(total % n == 0, InputError, what, " in place: ", total,
               " elements do not split into ", n, " equal blocks");
  return total / n;
}

namespace {
detail::Request to_request(OpKind kind, const void* in, void* out, std::size_t count, DType dtype,
                           ReduceOp op, int root, int tag, std::chrono::milliseconds timeout) {
  detail::Request r;
  r.kind = kind;
  r.in = in;
  r.out = out;
  r.count = count;
  r.dtype = dtype;
  r.op = op;
  r.root = root;
  r.tag = tag;
  r.timeout = timeout;
  return r;
}
}  // namespace

namespace {
// Checks what can be checked locally, before anything is exchanged.
detail::Request validated_request(const Communicator& comm, OpKind kind, const void* in, void* out,
                                  std::size_t count, DType dtype, ReduceOp op, int root, int tag,
                                  std::chrono::milliseconds timeout) {
  if (kind == OpKind::reduce || kind == OpKind::broadcast)
    DAGR_ENFORCE(root >= 0 && root < comm.size(), InputError, name(kind), ": root ", root,
                 " is not a rank of this group of ", comm.size());
  return to_request(kind, in, out, count, dtype, op, root, tag, timeout);
}
}  // namespace

void Communicator::run(const Call& c) {
  state_->run_now(validated_request(*this, c.kind, c.in, c.out, c.count, c.dtype, c.op, c.root_or_peer, c.tag,
                                    c.options.timeout.value_or(state_->timeout)));
}

namespace detail {
void allreduce_transformed(const Communicator& comm, AllreduceTransform& transform, const float* in, float* out,
                           std::size_t count) {
  Request r = to_request(OpKind::allreduce, in, out, count, DType::int32, ReduceOp::sum, 0, 0, comm.state_->timeout);
  r.transform = &transform;
  comm.state_->run_now(r);
}
}  // namespace detail

Work Communicator::submit(const Call& c) {
  detail::Request r = validated_request(*this, c.kind, c.in, c.out, c.count, c.dtype, c.op,
                                        c.root_or_peer, c.tag, c.options.timeout.value_or(state_->timeout));
  // A raw pointer: the executor lives inside the state and drains before it goes.
  return state_->queue_for(r.kind).submit([state = state_.get(), r]() mutable {
    r.deadline = detail::Clock::now() + r.timeout;
    state->execute(r);
  });
}

void Communicator::barrier(CallOptions o) { run(make(Kind::barrier, nullptr, nullptr, 0, DType::uint8, {}, 0, o)); }
Work Communicator::barrier_async(CallOptions o) {
  return submit(make(Kind::barrier, nullptr, nullptr, 0, DType::uint8, {}, 0, o));
}

std::optional<Communicator> Communicator::split(int color, int key) {
  const std::array<std::int64_t, 2> mine{color, key};
  std::vector<std::int64_t> all(2 * static_cast<std::size_t>(size()));
  allgather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
  const int split_number = ++state_->splits;

  std::vector<int> members;
  for (int p = 0; color >= 0 && p < size(); ++p)
    if (all[2 * p] == color) members.push_back(p);
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
  const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank()) - members.begin());

  std::unique_ptr<detail::Backend> backend;
  state_->collectives.run_inline([&] {
    backend = state_->backend->split(color, members, new_rank, detail::concat(split_number, "c", color),
                                     detail::Clock::now() + state_->timeout);
  });
  if (!backend) return std::nullopt;
  return detail::make_communicator(std::move(backend), state_->timeout);
}

Communicator::Shrunk Communicator::shrink(std::uint64_t value) {
  auto* shm = dynamic_cast<detail::ShmBackend*>(state_->backend.get());
  DAGR_ENFORCE(shm, InputError, "shrink() needs a shared-memory group; this one runs on ", backend_name());
  detail::ShrinkOutcome out;
  state_->collectives.run_inline([&] { out = shm->shrink(value, state_->timeout); });
  return {detail::make_communicator(std::move(out.backend), state_->timeout), std::move(out.survivors),
          out.agreed_min};
}

}  // namespace dagr
