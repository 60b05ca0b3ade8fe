#include "shm/shm_backend.h"

#include <unistd.h>

#include <cstring>
#include <thread>

#include "allreduce_transform.h"
#include "dagr/error.h"
#include "fault_report.h"
#include "job_secret.h"
#include "log.h"
#include "reduce_kernels.h"

namespace dagr::detail {
namespace {

// Rank 0 fills in what zeroed memory does not already say (with the tag of
// its job secret, if it was given one), then marks the segment ready.
void initialise(std::byte* base, const Layout& layout, const std::string& secret) {
  auto* header = reinterpret_cast<SegmentHeader*>(base);
  header->size = layout.size;
  header->geometry = layout.geometry;
  if (!secret.empty()) {
    header->secured = 1;
    fill_random(header->salt.data(), header->salt.size());
    header->tag = admission_tag(secret, header->salt);
  }
  header->magic.store(kSegmentReady, std::memory_order_release);
}

// A joining rank's own check, before it takes a place: its secret must be the
// one rank 0 was given (the same tag for the same salt), or both have none.
void admit(const SegmentHeader& header, const std::string& name, int rank, const std::string& secret) {
  const std::string refused = concat("rank ", rank, " refused by group /dev/shm", name, ": ");
  if (!header.secured) {
    DAGR_ENFORCE(secret.empty(), InputError, refused,
                 "this process holds a job secret but the group's rank 0 was given none (not this job's rank 0?)");
    return;
  }
  DAGR_ENFORCE(!secret.empty(), InputError, refused,
               "the job admits only its own workers, which hold its secret (handed by dagr launch on "
               "DAGR_SECRET_FD), and this process was given none");
  const AdmissionTag mine = admission_tag(secret, header.salt);
  unsigned char differ = 0;  // every byte looked at, whatever the first difference
  for (std::size_t i = 0; i < mine.size(); ++i) differ |= static_cast<unsigned char>(mine[i] ^ header.tag[i]);
  DAGR_ENFORCE(differ == 0, InputError, refused,
               "the job admits only its own workers, and this process's secret (DAGR_SECRET_FD) is not the job's");
}

// The geometry a joining rank must use: rank 0's, read from the segment, once
// the rank is admitted.
Layout layout_of(const Segment& segment, const std::string& name, int rank, int expected_size,
                 const std::string& secret, Clock::time_point deadline) {
  auto* header = reinterpret_cast<SegmentHeader*>(segment.data());
  while (header->magic.load(std::memory_order_acquire) != kSegmentReady) {
    DAGR_ENFORCE(Clock::now() < deadline, TimeoutError, "timed out waiting for rank 0 to set up /dev/shm", name);
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  admit(*header, name, rank, secret);
  DAGR_ENFORCE(header->size == expected_size, MismatchError, "group /dev/shm", name,
               ": rank 0 created it for ", header->size, " ranks but this rank was told ",
               expected_size);
  Layout layout(expected_size, header->geometry);
  DAGR_ENFORCE(layout.total <= segment.size(), Error, "shared memory /dev/shm", name,
               " is smaller than its layout needs");
  return layout;
}

}  // namespace

ShmBackend::ShmBackend(Segment segment, const Layout& layout, std::string name, int rank, bool world,
                       int world_rank)
    : segment_(std::move(segment)),
      view_(segment_.data(), layout),
      name_(std::move(name)),
      rank_(rank),
      world_rank_(world_rank < 0 ? rank : world_rank),
      world_(world),
      size_(layout.size),
      waiter_(segment_, view_, rank, wait_policy_from_env(layout.size), world),
      sources_(static_cast<std::size_t>(layout.size)),
      words_(static_cast<std::size_t>(layout.size)) {}

std::unique_ptr<ShmBackend> ShmBackend::join(const std::string& name, int rank, int size,
                                             Clock::time_point deadline, bool world, int world_rank,
                                             std::vector<int> launched_ranks) {
  DAGR_ENFORCE(size >= 1 && rank >= 0 && rank < size, InputError, "rank ", rank,
               " is not in a group of size ", size);
  // A member that never joins is reported to the launcher by its launched
  // number (without a report the launcher would blame the rank whose join
  // timed out); returns that number (-1: unknown).
  const auto report_missing = [&](int r) {
    const int launched = world ? r
                         : static_cast<std::size_t>(r) < launched_ranks.size() ? launched_ranks[static_cast<std::size_t>(r)]
                                                                              : -1;
    if (launched >= 0) report_absent(launched);
    return launched;
  };
  const std::string& secret = job_secret();
  std::unique_ptr<ShmBackend> self;
  if (rank == 0) {
    const Layout layout(size, geometry_from_env(size));
    Segment segment = Segment::create(name, layout.total);
    initialise(segment.data(), layout, secret);
    self.reset(new ShmBackend(std::move(segment), layout, name, rank, world, world_rank));
  } else {
    try {
      Segment segment = Segment::open(name, deadline);
      const Layout layout = layout_of(segment, name, rank, size, secret, deadline);
      self.reset(new ShmBackend(std::move(segment), layout, name, rank, world, world_rank));
    } catch (const TimeoutError&) {
      report_missing(0);  // rank 0 never set the group up
      throw;
    }
  }
  self->attach();
  if (world) report_joined();
  if (rank == 0) {
    // Once everyone has it mapped, the name has done its job: remove it.
    SegmentHeader& h = self->view_.header();
    while (h.attached.load(std::memory_order_acquire) < static_cast<std::uint32_t>(size)) {
      if (Clock::now() >= deadline) {
        Segment::unlink(name);
        std::string missing;
        for (int r = 1; r < size; ++r)
          if (self->view_.control(r).state.load() == RankState::absent) {
            const int launched = report_missing(r);
            // Ranks waiting for this one (in other groups) follow the chain to it.
            if (missing.empty()) self->waiter_.note_blame(launched);
            missing += concat(missing.empty() ? "" : ", ", r);
          }
        throw TimeoutError(concat("only ", h.attached.load(), " of ", size, " ranks joined /dev/shm", name,
                                  " before the timeout; missing: ", missing));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    Segment::unlink(name);
  }
  return self;
}

std::unique_ptr<ShmBackend> ShmBackend::solo() {
  const Layout layout(1, ShmGeometry{.small_max_bytes = 0, .small_read_bytes = 0, .segment_bytes = 1u << 20, .buffers = 2,
                                     .channel_bytes = 4096});
  Segment segment = Segment::anonymous(layout.total);
  initialise(segment.data(), layout, "");  // private memory: nobody joins it
  std::unique_ptr<ShmBackend> self(new ShmBackend(std::move(segment), layout, "", 0, false, -1));
  self->attach();
  return self;
}

// Never blocks: the liveness lock is taken or refused at once (a second
// process claiming a rank that is already attached).
void ShmBackend::attach() {
  RankControl& c = view_.control(rank_);
  DAGR_ENFORCE(segment_.lock_rank(rank_), InputError, "rank ", rank_, " of /dev/shm", name_,
               " is already taken by pid ", c.pid, " (two processes were given the same RANK?)");
  attached_ = true;
  c.pid = static_cast<std::int32_t>(getpid());
  c.world_rank = world_rank_;
  c.waiting_for.store(-1, std::memory_order_relaxed);
  c.blames.store(0, std::memory_order_relaxed);
  c.state.store(RankState::attached, std::memory_order_release);
  if (world_) Waiter::attach_world(view_, rank_);
  view_.header().attached.fetch_add(1, std::memory_order_acq_rel);
  waiter_.notify();
}

ShmBackend::~ShmBackend() {
  if (!attached_) return;  // refused at attach(): the rank belongs to another process
  if (world_) Waiter::detach_world(view_.header());
  RankControl& c = view_.control(rank_);
  c.state.store(RankState::left, std::memory_order_release);
  waiter_.notify();
  segment_.unlock_rank(rank_);  // after `left`: peers never take this for a death
}

std::unique_ptr<Backend> ShmBackend::split(int color, std::span<const int> members, int new_rank,
                                           const std::string& group_id, Clock::time_point deadline) {
  if (color < 0) return nullptr;
  if (members.size() == 1) return solo();
  std::vector<int> launched;  // the members' numbers in the launched group, as they attached here
  for (int p : members) launched.push_back(world_ ? p : view_.control(p).world_rank);
  return join(concat(name_, ".", group_id), new_rank, static_cast<int>(members.size()), deadline, false, world_rank_,
              std::move(launched));
}

void ShmBackend::run(const Request& r) {
  if (r.kind == OpKind::send || r.kind == OpKind::recv) {
    // Its own context: a send and a recv may run beside a collective.
    const WaitContext context{r.deadline, r.timeout, [this, &r] {
      return concat(dagr::name(r.kind), r.kind == OpKind::send ? " to " : " from ", waiter_.name_of(r.root),
                    " (", dagr::name(r.dtype), ", count=", r.count, ", tag=", r.tag, ")");
    }};
    return r.kind == OpKind::send ? send(r, context) : recv(r, context);
  }
  context_.deadline = r.deadline;
  context_.timeout = r.timeout;
  collective(r);
}

static std::size_t payload_bytes(const Request& r, int size) {
  switch (r.kind) {
    case OpKind::barrier: return 0;
    case OpKind::reduce_scatter: return r.bytes() * static_cast<std::size_t>(size);
    default: return r.bytes();
  }
}

void ShmBackend::collective(const Request& r) {
  const std::uint64_t call = ++calls_;
  current_ = Fingerprint::of(r);
  context_.describe = [this, call] { return concat(current_.describe(), " (collective #", call, ")"); };
  waiter_.check_group(context_);
  // Measured (docs/PERFORMANCE.md): one step wins while each rank reads at most
  // ~128 KiB of peers' payloads; past that the pipeline's n reads win.
  const ShmGeometry& g = view_.layout().geometry;
  const std::size_t bytes = payload_bytes(r, size_);
  const bool small = bytes <= g.small_max_bytes && bytes * static_cast<std::size_t>(size_) <= g.small_read_bytes;
  DAGR_LOG_DEBUG("shm {} collective #{} {}: {}, {} B per rank", name_.empty() ? "solo" : name_, call,
                 current_.describe(), small ? "one-step" : "pipelined", bytes);
  place_ = small ? SharedPlace{} : locate(r);
  arrive(r, small);
  if (small)
    small_path(r);
  else
    large_path(r);
}

void ShmBackend::arrive(const Request& r, bool small) {
  const std::uint64_t call = calls_;
  SlotHeader& mine = view_.slot(rank_, call);
  const bool contributes = r.kind != OpKind::broadcast || r.root == rank_;
  if (small && r.transform)
    r.transform->encode(0, r.count, reinterpret_cast<std::uint32_t*>(view_.payload(rank_, call)));
  else if (small && contributes && r.in)
    std::memcpy(view_.payload(rank_, call), r.in, payload_bytes(r, size_));
  else if (!small)  // where its buffer lies, if in shared buffers (shm_shared.cc)
    std::memcpy(view_.payload(rank_, call), &place_, sizeof place_);
  mine.fingerprint = current_;
  mine.seq.store(call, std::memory_order_release);
  waiter_.notify();
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    SlotHeader& theirs = view_.slot(p, call);
    waiter_.wait(p, context_, [&] { return theirs.seq.load(std::memory_order_acquire) == call; });
    DAGR_ENFORCE(theirs.fingerprint == current_, MismatchError, "collective #", call,
                 " does not match across ranks: ", waiter_.name_of(rank_), " called ", current_.describe(),
                 " but ", waiter_.name_of(p), " called ", theirs.fingerprint.describe());
  }
}

// Everyone's payload is in its slot: each rank computes its own result from them.
void ShmBackend::small_path(const Request& r) {
  const std::uint64_t call = calls_;
  const std::size_t bytes = r.bytes();
  auto* out = static_cast<std::byte*>(r.out);
  const auto* in = static_cast<const std::byte*>(r.in);
  auto source = [&](int p) -> const std::byte* { return p == rank_ ? in : view_.payload(p, call); };
  const void** sources = sources_.data();
  if (bytes == 0) return;  // a barrier, or an empty call: the arrival was all of it
  switch (r.kind) {
    case OpKind::reduce:
      if (rank_ != r.root) return;
      [[fallthrough]];
    case OpKind::allreduce:
      if (r.transform) {  // everyone's encoding is in its slot; rank 0's decode is the checked one
        for (int p = 0; p < size_; ++p) words_[p] = reinterpret_cast<const std::uint32_t*>(view_.payload(p, call));
        return r.transform->reduce(0, r.count, words_.data(), size_, false, rank_ == 0, nullptr);
      }
      for (int p = 0; p < size_; ++p) sources[p] = source(p);
      return reduce_sources({out}, sources, size_, r.count, r.dtype, r.op);
    case OpKind::reduce_scatter:
      for (int p = 0; p < size_; ++p) sources[p] = source(p) + rank_ * bytes;
      return reduce_sources({out}, sources, size_, r.count, r.dtype, r.op);
    case OpKind::broadcast:
      if (out != source(r.root)) std::memcpy(out, source(r.root), bytes);
      return;
    case OpKind::allgather:
      for (int p = 0; p < size_; ++p)
        if (out + p * bytes != source(p)) std::memcpy(out + p * bytes, source(p), bytes);
      return;
    default: return;
  }
}

}  // namespace dagr::detail
