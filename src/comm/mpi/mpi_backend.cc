#include "mpi/mpi_backend.h"

#include <climits>
#include <cstring>
#include <vector>

#include "dagr/error.h"
#include "mpi/checked_exchange.h"
#include "reduce_kernels.h"

namespace dagr::detail {
namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::float32: return MPI_FLOAT;
    case DType::float64: return MPI_DOUBLE;
    case DType::float16:
    case DType::bfloat16: return MPI_UINT16_T;  // reduced with dagr's own MPI_Op
    case DType::int32: return MPI_INT32_T;
    case DType::int64: return MPI_INT64_T;
    case DType::uint8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(MpiRuntime& runtime, DType t, ReduceOp op) {
  if (t == DType::float16 || t == DType::bfloat16) return runtime.user_op(t, op);
  switch (op) {
    case ReduceOp::min: return MPI_MIN;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::prod: return MPI_PROD;
    default: return MPI_SUM;  // avg: sum, then divide
  }
}

// An allreduce is reduced inside the checked exchange (one round trip for two
// ranks) up to this size; larger ones, on more than two ranks, go to MPI's own
// allreduce after the check, whose algorithms send fewer bytes than recursive
// doubling does there. For two ranks recursive doubling is one swap of the
// whole buffer, as much as any algorithm sends, so it is used at every size.
constexpr std::size_t kExchangeAllreduceBytes = 64 << 10;

int as_int(std::size_t count) {
  DAGR_ENFORCE(count <= static_cast<std::size_t>(INT_MAX), InputError, "the MPI backend moves at most ",
               INT_MAX, " elements per call, not ", count);
  return static_cast<int>(count);
}

}  // namespace

MpiBackend::MpiBackend(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, Clock::time_point deadline)
    : runtime_(std::move(runtime)) {
  // MPI_Comm_dup waits for every rank: posted as MPI_Comm_idup, bounded by the deadline.
  auto dup = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
  Request like;
  like.deadline = deadline;
  post_and_wait([dup, comm](MPI_Request* q) { return MPI_Comm_idup(comm, dup.get(), q); }, like,
                [] { return std::string("MPI_Comm_idup (making the communicator)"); });
  comm_ = *dup;
  auto dup2 = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
  post_and_wait([dup2, comm](MPI_Request* q) { return MPI_Comm_idup(comm, dup2.get(), q); }, like,
                [] { return std::string("MPI_Comm_idup (making the communicator)"); });
  exchange_comm_ = *dup2;
  runtime_->call([&] {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(exchange_comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  });
}

MpiBackend::~MpiBackend() {
  try {
    runtime_->call([&] {
      MPI_Comm_free(&exchange_comm_);
      MPI_Comm_free(&comm_);
    });
  } catch (const Error&) {
    // MPI failed earlier and is not called again: the handle goes with the process.
  }
}

void MpiBackend::post_and_wait(std::function<int(MPI_Request*)> post, const Request& r,
                               const std::function<std::string()>& what, MPI_Status* status) {
  // The step outlives this call if it times out: it owns `post` (and so the
  // buffers `post` owns) and everything it touches after posting. The caller's
  // own buffers are written by MPI only while the runtime is healthy, and a
  // timeout fails the runtime, so never after this call returned.
  auto request = std::make_shared<MPI_Request>(MPI_REQUEST_NULL);
  auto posted = std::make_shared<bool>(false);
  auto out_status = std::make_shared<MPI_Status>();
  auto description = std::make_shared<std::string>(what());
  runtime_->run(
      [=, post = std::move(post)] {
        if (!*posted) {
          *posted = true;
          check_mpi(post(request.get()), description->c_str());
        }
        int done = 0;
        check_mpi(MPI_Test(request.get(), &done, out_status.get()), description->c_str());
        return done != 0;
      },
      r.deadline, what);
  if (status) *status = *out_status;
}

void MpiBackend::run(const Request& r) {
  const std::uint64_t call = r.kind == OpKind::send || r.kind == OpKind::recv ? 0 : ++calls_;
  const std::function<std::string()> what = [&r, call] {
    if (r.kind == OpKind::send || r.kind == OpKind::recv)
      return concat(dagr::name(r.kind), r.kind == OpKind::send ? " to" : " from", " rank ", r.root, " (",
                    dagr::name(r.dtype), ", count=", r.count, ", tag=", r.tag, ")");
    return concat(Fingerprint::of(r).describe(), " (collective #", call, ")");
  };
  if (r.kind == OpKind::send || r.kind == OpKind::recv) return point_to_point(r, what);
  const bool reduced_in_check = r.kind == OpKind::allreduce && r.bytes() <= static_cast<std::size_t>(INT_MAX) &&
                                (r.bytes() <= kExchangeAllreduceBytes || size_ == 2);
  check_fingerprints(r, what, reduced_in_check);
  if (!reduced_in_check) return collective(r, what);
  if (r.op == ReduceOp::avg) divide(r.out, r.count, r.dtype, size_);
}

// The exchange and the gathered fingerprints belong to their steps
// (shared_ptr), not to this frame: a timed-out exchange is abandoned with them.
void MpiBackend::check_fingerprints(const Request& r, const std::function<std::string()>& what, bool with_data) {
  auto exchange = std::make_shared<CheckedExchange>(r, with_data, exchange_comm_, rank_, size_);
  runtime_->run([exchange] { return exchange->step(); }, r.deadline, what);
  if (exchange->agreed()) return;
  const auto mine = std::make_shared<const Fingerprint>(Fingerprint::of(r));
  const MPI_Comm comm = comm_;
  auto all = std::make_shared<std::vector<Fingerprint>>(static_cast<std::size_t>(size_));
  post_and_wait([mine, all, comm](MPI_Request* q) {
    return MPI_Iallgather(mine.get(), sizeof(Fingerprint), MPI_BYTE, all->data(), sizeof(Fingerprint), MPI_BYTE,
                          comm, q);
  }, r, what);
  for (int p = 0; p < size_; ++p)
    DAGR_ENFORCE((*all)[static_cast<std::size_t>(p)] == *mine, MismatchError, "collective #", calls_,
                 " does not match across ranks: rank ", rank_, " called ", mine->describe(), " but rank ", p,
                 " called ", (*all)[static_cast<std::size_t>(p)].describe());
  throw MismatchError(concat("collective #", calls_, " does not match across ranks (rank ", rank_, " called ",
                             mine->describe(), ")"));
}

// Every collective not done by the check itself is MPI's non-blocking one,
// polled to its deadline like any other operation (see mpi_runtime.h: a
// blocking MPI collective under the lock would stop this process's other groups
// and can deadlock two groups used from two threads). The fingerprint check
// before it has met every rank, so a collective that times out here means a
// peer stopped in the middle.
void MpiBackend::collective(const Request& r, const std::function<std::string()>& what) {
  const MPI_Datatype type = mpi_type(r.dtype);
  const int count = as_int(r.count);
  const std::size_t bytes = r.bytes();
  void* out = r.out;
  const void* in = r.in;
  const MPI_Comm comm = comm_;
  MpiRuntime* runtime = runtime_.get();  // outlives every step
  const DType dtype = r.dtype;
  const ReduceOp op = r.op;
  const int root = r.root;
  switch (r.kind) {
    case OpKind::barrier: return;  // the fingerprint check already met every rank
    case OpKind::allreduce: {
      // OpenMPI's MPI_Iallreduce (libnbc) takes its ring only out of place
      // (4 or more ranks, 64 KiB or more); in place it reduces to rank 0 and
      // broadcasts back, twice the time on a network link. So a large in-place
      // call sends from a copy of its input: a memcpy, against a network transfer.
      const bool copy_input = in == out && size_ >= 4 && bytes >= (64u << 10);
      auto input = std::make_shared<std::vector<std::byte>>(copy_input ? bytes : 0);
      if (copy_input) std::memcpy(input->data(), in, bytes);
      post_and_wait([=](MPI_Request* q) {  // owns `input`: see post_and_wait
        const void* send = copy_input ? static_cast<const void*>(input->data()) : in == out ? MPI_IN_PLACE : in;
        return MPI_Iallreduce(send, out, count, type, mpi_op(*runtime, dtype, op), comm, q);
      }, r, what);
      if (r.op == ReduceOp::avg) divide(out, r.count, r.dtype, size_);
      return;
    }
    case OpKind::reduce: {
      const bool is_root = rank_ == root;
      post_and_wait([=](MPI_Request* q) {
        return MPI_Ireduce(is_root && in == out ? MPI_IN_PLACE : in, out, count, type, mpi_op(*runtime, dtype, op),
                           root, comm, q);
      }, r, what);
      if (is_root && r.op == ReduceOp::avg) divide(out, r.count, r.dtype, size_);
      return;
    }
    case OpKind::broadcast:
      if (rank_ == root && in != out && bytes > 0) std::memcpy(out, in, bytes);
      return post_and_wait([=](MPI_Request* q) { return MPI_Ibcast(out, count, type, root, comm, q); }, r, what);
    case OpKind::allgather: {
      const bool in_place = static_cast<const std::byte*>(in) == static_cast<std::byte*>(out) + rank_ * bytes;
      return post_and_wait([=](MPI_Request* q) {
        return MPI_Iallgather(in_place ? MPI_IN_PLACE : in, count, type, out, count, type, comm, q);
      }, r, what);
    }
    case OpKind::reduce_scatter: {
      // MPI writes the result to the start of recvbuf; in place, ours goes to
      // block rank(), so MPI writes into a buffer of the step's own first.
      const bool in_place = static_cast<std::byte*>(out) == static_cast<const std::byte*>(in) + rank_ * bytes;
      auto result = std::make_shared<std::vector<std::byte>>(in_place ? bytes : 0);
      void* target = in_place ? static_cast<void*>(result->data()) : out;
      post_and_wait([=](MPI_Request* q) {
        return MPI_Ireduce_scatter_block(in, target, count, type, mpi_op(*runtime, dtype, op), comm, q);
      }, r, what);
      if (in_place && bytes > 0) std::memcpy(out, result->data(), bytes);
      if (r.op == ReduceOp::avg) divide(out, r.count, r.dtype, size_);
      return;
    }
    default: return;
  }
}

// A receive of the wrong size is a MismatchError (MPI_Get_count tells); the
// element type is not carried by MPI and cannot be checked.
void MpiBackend::point_to_point(const Request& r, const std::function<std::string()>& what) {
  DAGR_ENFORCE(r.root >= 0 && r.root < size_ && r.root != rank_, InputError, "rank ", rank_, ": peer rank ",
               r.root, " is not another rank of this group of ", size_);
  const MPI_Datatype type = mpi_type(r.dtype);
  const int count = as_int(r.count);
  const int peer = r.root, tag = r.tag;
  const MPI_Comm comm = comm_;
  if (r.kind == OpKind::send) {
    const void* in = r.in;
    return post_and_wait([=](MPI_Request* q) { return MPI_Isend(in, count, type, peer, tag, comm, q); }, r, what);
  }
  // Probe first, so a longer message is reported, not truncated.
  auto status = std::make_shared<MPI_Status>();
  runtime_->run([=] {
    int found = 0;
    check_mpi(MPI_Iprobe(peer, tag, comm, &found, status.get()), "MPI_Iprobe");
    return found != 0;
  }, r.deadline, what);
  int got = 0;
  MPI_Get_count(status.get(), type, &got);
  DAGR_ENFORCE(got == count, MismatchError, "rank ", rank_, " expected ", what(), " but rank ", r.root,
               " sent count=", got, " of that type");
  void* out = r.out;
  post_and_wait([=](MPI_Request* q) { return MPI_Irecv(out, count, type, peer, tag, comm, q); }, r, what);
}

// MPI_Comm_split waits for every rank of this group and has no non-blocking
// form: the members first meet in an MPI_Ibarrier bounded by the deadline, so
// the split itself, run under the lock, waits on no rank that is not already
// on its way into it.
std::unique_ptr<Backend> MpiBackend::split(int color, std::span<const int>, int new_rank, const std::string&,
                                           Clock::time_point deadline) {
  Request like;
  like.deadline = deadline;
  const MPI_Comm comm = comm_;
  post_and_wait([comm](MPI_Request* q) { return MPI_Ibarrier(comm, q); }, like,
                [] { return std::string("the meeting point before MPI_Comm_split"); });
  MPI_Comm sub = MPI_COMM_NULL;
  runtime_->call([&] {
    check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, new_rank, &sub), "MPI_Comm_split");
  });
  if (sub == MPI_COMM_NULL) return nullptr;
  auto backend = std::make_unique<MpiBackend>(runtime_, sub, deadline);
  runtime_->call([&] { MPI_Comm_free(&sub); });
  return backend;
}

}  // namespace dagr::detail
