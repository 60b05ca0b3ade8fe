// dagr::Communicator — the aggregator: rank, size, collectives, point-to-point.
//
//   auto comm = dagr::Communicator::from_env();   // set up by `dagr launch`; size 1 without it
//   comm.allreduce(std::span<float>(grads), dagr::ReduceOp::avg);
//
// Contract (docs/DESIGN.md): every rank calls the collectives in the same order.
// Each call is fingerprinted (sequence number, op, dtype, count, root); ranks
// that disagree all get a MismatchError naming both sides. Every wait is
// bounded by the communicator's timeout (default 5 minutes, or per call); a
// dead or departed peer becomes a PeerError naming the rank. Results are
// bitwise identical on every rank and from run to run.
//
// After a collective failed, the communicator refuses further calls.
// A Communicator is a handle: copies share one underlying group. Calls must be
// issued from one thread at a time. *_async calls run on background threads:
// collectives in issue order, sends in issue order, receives in issue order; a
// blocking call waits for the async calls of its own kind issued before it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dagr/comm/dtype.h"
#include "dagr/comm/op_kind.h"
#include "dagr/comm/reduce_op.h"
#include "dagr/comm/work.h"

namespace dagr {

class Communicator;
class SharedBuffer;  // dagr/comm/shared_buffer.h
namespace detail {
class Backend;
struct Request;
struct CommState;
struct AllreduceTransform;
Communicator make_communicator(std::unique_ptr<Backend> backend, std::chrono::milliseconds timeout);
// A blocking allreduce of `count` floats from `in` to `out` whose words are
// `transform`'s encoding (src/comm/allreduce_transform.h; secure aggregation).
void allreduce_transformed(const Communicator& comm, AllreduceTransform& transform, const float* in, float* out,
                           std::size_t count);
}  // namespace detail

struct CallOptions {
  std::optional<std::chrono::milliseconds> timeout;  // default: the communicator's
};

// Joining a shared-memory group on this machine explicitly (tests, embedding).
struct ShmJoin {
  std::string job;  // names the group's shared memory; equal on every rank, unique per job
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
};

class Communicator {
 public:
  // A group of one: every collective is a local copy. What user code gets without a launcher.
  Communicator();
  // The group this process was started in. Under mpirun/srun (or with
  // DAGR_BACKEND=mpi) it is MPI_COMM_WORLD over MPI; DAGR_BACKEND=hier makes it
  // hierarchical (shared memory within a host, MPI between hosts). Otherwise
  // the shared-memory group `dagr launch` describes (RANK, WORLD_SIZE,
  // DAGR_JOB_ID); a group of one when WORLD_SIZE is unset. DAGR_TIMEOUT_S sets
  // the timeout.
  static Communicator from_env();
  // Whether this build has the MPI backend.
  static bool mpi_available();
  static Communicator join(const ShmJoin& how);

  int rank() const;
  int size() const;
  std::chrono::milliseconds timeout() const;
  void set_timeout(std::chrono::milliseconds timeout);
  std::string backend_name() const;

  // `bytes` of memory this group reduces in place without staging copies
  // (dagr/comm/shared_buffer.h): on shared memory a block of a segment every
  // rank maps, elsewhere ordinary memory. Collective: every rank asks for the
  // same number of bytes (a MismatchError otherwise).
  SharedBuffer allocate_shared(std::size_t bytes);

  // Ranks with the same color form a new group, ordered by (key, old rank).
  // Collective over this communicator; a negative color joins no group (nullopt).
  std::optional<Communicator> split(int color, int key);

  // After a PeerError or TimeoutError, on every rank still alive: the survivors
  // agree on who they are and form a new group of just them in fresh shared
  // memory, renumbered in this group's rank order. Dead and departed ranks are
  // left out at once, a silent one after this communicator's timeout. `value`
  // is this rank's number to agree on (e.g. its last completed step); the
  // result carries the minimum over the survivors. Shared-memory groups only
  // (InputError for MPI). A second failure during the shrink is an error.
  struct Shrunk;
  Shrunk shrink(std::uint64_t value = 0);

  // ---- blocking collectives; `data` is in place, (in, out) out of place ----
  template <Element T>
  void allreduce(std::span<T> data, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(make(Kind::allreduce, data.data(), data.data(), data.size(), dtype_of<T>(), op, 0, o));
  }
  template <Element T>
  void allreduce(std::span<const T> in, std::span<T> out, ReduceOp op = ReduceOp::sum,
                 CallOptions o = {}) {
    check_sizes(in.size(), out.size(), "allreduce");
    run(make(Kind::allreduce, in.data(), out.data(), in.size(), dtype_of<T>(), op, 0, o));
  }
  // The result lands on `root` only.
  template <Element T>
  void reduce(std::span<T> data, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    run(make(Kind::reduce, data.data(), data.data(), data.size(), dtype_of<T>(), op, root, o));
  }
  template <Element T>
  void broadcast(std::span<T> data, int root, CallOptions o = {}) {
    run(make(Kind::broadcast, data.data(), data.data(), data.size(), dtype_of<T>(), {}, root, o));
  }
  // out holds size() blocks of in.size(): block r is rank r's `in`.
  template <Element T>
  void allgather(std::span<const T> in, std::span<T> out, CallOptions o = {}) {
    check_sizes(in.size() * static_cast<std::size_t>(size()), out.size(), "allgather");
    run(make(Kind::allgather, in.data(), out.data(), in.size(), dtype_of<T>(), {}, 0, o));
  }
  // In place: this rank's contribution already sits in block rank() of data.
  template <Element T>
  void allgather(std::span<T> data, CallOptions o = {}) {
    const std::size_t n = block_of(data.size(), "allgather");
    run(make(Kind::allgather, data.data() + n * rank(), data.data(), n, dtype_of<T>(), {}, 0, o));
  }
  // in holds size() blocks of out.size(); out = the reduction of everyone's block rank().
  template <Element T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op = ReduceOp::sum,
                      CallOptions o = {}) {
    check_sizes(out.size() * static_cast<std::size_t>(size()), in.size(), "reduce_scatter");
    run(make(Kind::reduce_scatter, in.data(), out.data(), out.size(), dtype_of<T>(), op, 0, o));
  }
  // In place: the result lands in block rank() of data.
  template <Element T>
  void reduce_scatter(std::span<T> data, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    const std::size_t n = block_of(data.size(), "reduce_scatter");
    run(make(Kind::reduce_scatter, data.data(), data.data() + n * rank(), n, dtype_of<T>(), op,
             0, o));
  }
  void barrier(CallOptions o = {});

  // ---- point to point: messages between a pair arrive in order ----
  template <Element T>
  void send(std::span<const T> data, int peer, int tag = 0, CallOptions o = {}) {
    run(make_p2p(Kind::send, data.data(), nullptr, data.size(), dtype_of<T>(), peer, tag, o));
  }
  template <Element T>
  void recv(std::span<T> data, int peer, int tag = 0, CallOptions o = {}) {
    run(make_p2p(Kind::recv, nullptr, data.data(), data.size(), dtype_of<T>(), peer, tag, o));
  }

  // ---- asynchronous forms: same arguments, a Work to wait on ----
  template <Element T>
  Work allreduce_async(std::span<T> data, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(make(Kind::allreduce, data.data(), data.data(), data.size(), dtype_of<T>(), op,
                       0, o));
  }
  template <Element T>
  Work allreduce_async(std::span<const T> in, std::span<T> out, ReduceOp op = ReduceOp::sum,
                       CallOptions o = {}) {
    check_sizes(in.size(), out.size(), "allreduce");
    return submit(make(Kind::allreduce, in.data(), out.data(), in.size(), dtype_of<T>(), op, 0, o));
  }
  template <Element T>
  Work reduce_async(std::span<T> data, int root, ReduceOp op = ReduceOp::sum, CallOptions o = {}) {
    return submit(make(Kind::reduce, data.data(), data.data(), data.size(), dtype_of<T>(), op,
                       root, o));
  }
  template <Element T>
  Work broadcast_async(std::span<T> data, int root, CallOptions o = {}) {
    return submit(make(Kind::broadcast, data.data(), data.data(), data.size(), dtype_of<T>(), {},
                       root, o));
  }
  template <Element T>
  Work allgather_async(std::span<const T> in, std::span<T> out, CallOptions o = {}) {
    check_sizes(in.size() * static_cast<std::size_t>(size()), out.size(), "allgather");
    return submit(make(Kind::allgather, in.data(), out.data(), in.size(), dtype_of<T>(), {}, 0, o));
  }
  template <Element T>
  Work reduce_scatter_async(std::span<const T> in, std::span<T> out, ReduceOp op = ReduceOp::sum,
                            CallOptions o = {}) {
    check_sizes(out.size() * static_cast<std::size_t>(size()), in.size(), "reduce_scatter");
    return submit(make(Kind::reduce_scatter, in.data(), out.data(), out.size(), dtype_of<T>(), op,
                       0, o));
  }
  Work barrier_async(CallOptions o = {});
  template <Element T>
  Work send_async(std::span<const T> data, int peer, int tag = 0, CallOptions o = {}) {
    return submit(make_p2p(Kind::send, data.data(), nullptr, data.size(), dtype_of<T>(), peer, tag, o));
  }
  template <Element T>
  Work recv_async(std::span<T> data, int peer, int tag = 0, CallOptions o = {}) {
    return submit(make_p2p(Kind::recv, nullptr, data.data(), data.size(), dtype_of<T>(), peer, tag, o));
  }

 private:
  using Kind = OpKind;
  struct Call {  // what the templates hand to the untyped core; see detail::Request
    Kind kind;
    const void* in;
    void* out;
    std::size_t count;
    DType dtype;
    ReduceOp op;
    int root_or_peer;
    int tag;
    CallOptions options;
  };
  static Call make(Kind k, const void* in, void* out, std::size_t count, DType t, ReduceOp op,
                   int root, CallOptions o) {
    return Call{k, in, out, count, t, op, root, 0, o};
  }
  static Call make_p2p(Kind k, const void* in, void* out, std::size_t count, DType t, int peer,
                       int tag, CallOptions o) {
    return Call{k, in, out, count, t, ReduceOp::sum, peer, tag, o};
  }
  void check_sizes(std::size_t expected, std::size_t got, const char* what) const;
  std::size_t block_of(std::size_t total, const char* what) const;
  void run(const Call& call);
  Work submit(const Call& call);

  explicit Communicator(std::shared_ptr<detail::CommState> state);
  friend Communicator detail::make_communicator(std::unique_ptr<detail::Backend>, std::chrono::milliseconds);
  friend void detail::allreduce_transformed(const Communicator&, detail::AllreduceTransform&, const float*, float*,
                                            std::size_t);
  std::shared_ptr<detail::CommState> state_;
};

struct Communicator::Shrunk {
  Communicator comm;           // the survivors' group
  std::vector<int> survivors;  // their ranks in the old group, in new-rank order
  std::uint64_t agreed_min;    // the minimum of the survivors' values
};


}  // namespace dagr
