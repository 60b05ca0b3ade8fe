#include "mpi/mpi_backend.h"

#include <climits>
#include <cstring>
#include <vector>

#include "dagr/error.h"
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

int as_int(std::size_t count) {
  DAGR_ENFORCE(count <= static_cast<std::size_t>(INT_MAX), InputError, "the MPI backend moves at most ",
               INT_MAX, " elements per call, not ", count);
  return static_cast<int>(count);
}

}  // namespace

MpiBackend::MpiBackend(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm) : runtime_(std::move(runtime)) {
  runtime_->call([&] {
    check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  });
}

MpiBackend::~MpiBackend() {
  runtime_->call([&] { MPI_Comm_free(&comm_); });
}

void MpiBackend::post_and_wait(const std::function<int(MPI_Request*)>& post, const Request& r,
                               const std::function<std::string()>& what, MPI_Status* status) {
  // The step outlives this call if it times out: it owns everything it touches
  // after posting (the buffers are the caller's, as with any unfinished MPI call).
  auto request = std::make_shared<MPI_Request>(MPI_REQUEST_NULL);
  auto posted = std::make_shared<bool>(false);
  auto out_status = std::make_shared<MPI_Status>();
  auto description = std::make_shared<std::string>(what());
  runtime_->run(
      [=] {
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
  check_fingerprints(r, what);
  collective(r, what);
}

void MpiBackend::check_fingerprints(const Request& r, const std::function<std::string()>& what) {
  const Fingerprint mine = Fingerprint::of(r);
  std::uint64_t words[2];
  std::memcpy(words, &mine, sizeof words);
  std::uint64_t check[4] = {words[0], words[1], ~words[0], ~words[1]};
  post_and_wait([&](MPI_Request* q) { return MPI_Iallreduce(MPI_IN_PLACE, check, 4, MPI_UINT64_T, MPI_MAX, comm_, q); },
                r, what);
  if (check[0] == ~check[2] && check[1] == ~check[3]) return;  // max == min: all equal
  std::vector<Fingerprint> all(static_cast<std::size_t>(size_));
  post_and_wait([&](MPI_Request* q) {
    return MPI_Iallgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, comm_, q);
  }, r, what);
  for (int p = 0; p < size_; ++p)
    DAGR_ENFORCE(all[static_cast<std::size_t>(p)] == mine, MismatchError, "collective #", calls_,
                 " does not match across ranks: rank ", rank_, " called ", mine.describe(), " but rank ", p,
                 " called ", all[static_cast<std::size_t>(p)].describe());
  throw MismatchError(concat("collective #", calls_, " does not match across ranks (rank ", rank_, " called ",
                             mine.describe(), ")"));
}

// The fingerprint check (non-blocking, bounded by the deadline) is a meeting
// point: once it passed, every rank has entered this collective, so the
// blocking MPI collective that follows cannot wait on a silent peer (a dead one
// ends the job through mpirun). Blocking collectives use MPI's tuned
// algorithms, twice as fast at 1 MiB here as the non-blocking ones (libnbc).
void MpiBackend::collective(const Request& r, const std::function<std::string()>&) {
  const MPI_Datatype type = mpi_type(r.dtype);
  const int count = as_int(r.count);
  const std::size_t bytes = r.bytes();
  void* out = r.out;
  const void* in = r.in;
  switch (r.kind) {
    case OpKind::barrier: return;  // the fingerprint check already met every rank
    case OpKind::allreduce:
      runtime_->call([&] {
        const MPI_Op op = mpi_op(*runtime_, r.dtype, r.op);
        check_mpi(MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, count, type, op, comm_), "MPI_Allreduce");
      });
      if (r.op == ReduceOp::avg) divide(out, r.count, r.dtype, size_);
      return;
    case OpKind::reduce: {
      const bool root = rank_ == r.root;
      runtime_->call([&] {
        const MPI_Op op = mpi_op(*runtime_, r.dtype, r.op);
        check_mpi(MPI_Reduce(root && in == out ? MPI_IN_PLACE : in, out, count, type, op, r.root, comm_),
                  "MPI_Reduce");
      });
      if (root && r.op == ReduceOp::avg) divide(out, r.count, r.dtype, size_);
      return;
    }
    case OpKind::broadcast:
      if (rank_ == r.root && in != out) std::memcpy(out, in, bytes);
      return runtime_->call([&] { check_mpi(MPI_Bcast(out, count, type, r.root, comm_), "MPI_Bcast"); });
    case OpKind::allgather: {
      const bool in_place = static_cast<const std::byte*>(in) == static_cast<std::byte*>(out) + rank_ * bytes;
      return runtime_->call([&] {
        check_mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : in, count, type, out, count, type, comm_), "MPI_Allgather");
      });
    }
    case OpKind::reduce_scatter: {
      // MPI writes the result to the start of recvbuf; in place, ours goes to block rank().
      std::vector<std::byte> result;
      const bool in_place = static_cast<std::byte*>(out) == static_cast<const std::byte*>(in) + rank_ * bytes;
      void* target = out;
      if (in_place) {
        result.resize(bytes);
        target = result.data();
      }
      runtime_->call([&] {
        const MPI_Op op = mpi_op(*runtime_, r.dtype, r.op);
        check_mpi(MPI_Reduce_scatter_block(in, target, count, type, op, comm_), "MPI_Reduce_scatter_block");
      });
      if (in_place) std::memcpy(out, result.data(), bytes);
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
  if (r.kind == OpKind::send) {
    return post_and_wait([&](MPI_Request* q) { return MPI_Isend(r.in, count, type, r.root, r.tag, comm_, q); }, r,
                         what);
  }
  // Probe first, so a longer message is reported, not truncated.
  auto status = std::make_shared<MPI_Status>();
  const int peer = r.root, tag = r.tag;
  const MPI_Comm comm = comm_;
  runtime_->run([=] {
    int found = 0;
    check_mpi(MPI_Iprobe(peer, tag, comm, &found, status.get()), "MPI_Iprobe");
    return found != 0;
  }, r.deadline, what);
  int got = 0;
  MPI_Get_count(status.get(), type, &got);
  DAGR_ENFORCE(got == count, MismatchError, "rank ", rank_, " expected ", what(), " but rank ", r.root,
               " sent count=", got, " of that type");
  post_and_wait([&](MPI_Request* q) { return MPI_Irecv(r.out, count, type, r.root, r.tag, comm_, q); }, r, what);
}

std::unique_ptr<Backend> MpiBackend::split(int color, std::span<const int>, int new_rank, const std::string&,
                                           Clock::time_point) {
  MPI_Comm sub = MPI_COMM_NULL;
  runtime_->call([&] {
    check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, new_rank, &sub), "MPI_Comm_split");
  });
  if (sub == MPI_COMM_NULL) return nullptr;
  auto backend = std::make_unique<MpiBackend>(runtime_, sub);
  runtime_->call([&] { MPI_Comm_free(&sub); });
  return backend;
}

}  // namespace dagr::detail
