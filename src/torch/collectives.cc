#include "dagr/torch/collectives.h"

#include "dagr/error.h"

namespace dagr {
namespace {

// `out`'s elements as the element type of `in` (InputError when the dtypes differ).
template <Element T>
std::span<T> same_type(const torch::Tensor& in, const torch::Tensor& out, const char* what) {
  check_tensor(out, detail::concat(what, " output"));
  DAGR_ENFORCE(in.scalar_type() == out.scalar_type(), InputError, what, ": input is ", in.scalar_type(),
               " but output is ", out.scalar_type());
  return span_of<T>(out, what);
}

}  // namespace

void allreduce(Communicator& comm, const torch::Tensor& t, ReduceOp op, CallOptions o) {
  visit_span(t, "allreduce", [&](auto data) { comm.allreduce(data, op, o); });
}

Work allreduce_async(Communicator& comm, const torch::Tensor& t, ReduceOp op, CallOptions o) {
  return visit_span(t, "allreduce", [&](auto data) { return comm.allreduce_async(data, op, o); });
}

void reduce(Communicator& comm, const torch::Tensor& t, int root, ReduceOp op, CallOptions o) {
  visit_span(t, "reduce", [&](auto data) { comm.reduce(data, root, op, o); });
}

void broadcast(Communicator& comm, const torch::Tensor& t, int root, CallOptions o) {
  visit_span(t, "broadcast", [&](auto data) { comm.broadcast(data, root, o); });
}

Work broadcast_async(Communicator& comm, const torch::Tensor& t, int root, CallOptions o) {
  return visit_span(t, "broadcast", [&](auto data) { return comm.broadcast_async(data, root, o); });
}

void allgather(Communicator& comm, const torch::Tensor& in, const torch::Tensor& out, CallOptions o) {
  visit_span(in, "allgather input", [&](auto data) {
    using T = typename decltype(data)::element_type;
    comm.allgather(std::span<const T>(data), same_type<T>(in, out, "allgather"), o);
  });
}

void reduce_scatter(Communicator& comm, const torch::Tensor& in, const torch::Tensor& out, ReduceOp op,
                    CallOptions o) {
  visit_span(in, "reduce_scatter input", [&](auto data) {
    using T = typename decltype(data)::element_type;
    comm.reduce_scatter(std::span<const T>(data), same_type<T>(in, out, "reduce_scatter"), op, o);
  });
}

void send(Communicator& comm, const torch::Tensor& t, int peer, int tag, CallOptions o) {
  visit_span(t, "send", [&](auto data) {
    using T = typename decltype(data)::element_type;
    comm.send(std::span<const T>(data), peer, tag, o);
  });
}

void recv(Communicator& comm, const torch::Tensor& t, int peer, int tag, CallOptions o) {
  visit_span(t, "recv", [&](auto data) { comm.recv(data, peer, tag, o); });
}

}  // namespace dagr
