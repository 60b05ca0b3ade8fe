#include "dagr/parallel/tensor_parallel.h"

#include "dagr/error.h"
#include "dagr/torch/tensor.h"

namespace dagr {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The communicator travels through autograd as an address: the module that
// owns it outlives the graph it builds.
Communicator& comm_of(AutogradContext* ctx) {
  return *reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
}
std::int64_t handle(Communicator& c) { return reinterpret_cast<std::int64_t>(&c); }

torch::Tensor allreduce_sum(torch::Tensor t, Communicator& comm) {
  t = t.contiguous();
  comm.allreduce(span_of<float>(t));
  return t;
}

// Concatenates every rank's [.., n_i] slice along the last dimension. The
// slices are padded to the largest so one equal-block allgather carries them.
torch::Tensor gather_last_dim(const torch::Tensor& local, std::int64_t total, Communicator& comm) {
  const int ranks = comm.size();
  const std::int64_t widest = shard_of(total, ranks, 0).length;
  auto rows = local.reshape({-1, local.size(-1)});
  auto padded = torch::zeros({rows.size(0), widest}, local.options());
  padded.narrow(1, 0, rows.size(1)).copy_(rows);
  auto all = torch::empty({ranks, rows.size(0), widest}, local.options());
  comm.allgather(std::span<const float>(span_of<float>(padded)), span_of<float>(all));
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < ranks; ++r) parts.push_back(all[r].narrow(1, 0, shard_of(total, ranks, r).length));
  auto sizes = local.sizes().vec();
  sizes.back() = total;
  return torch::cat(parts, 1).reshape(sizes);
}

// forward: identity; backward: allreduce (the input is used by every rank's shard).
struct CopyToGroup : torch::autograd::Function<CopyToGroup> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, std::int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return x.clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {allreduce_sum(grads[0], comm_of(ctx)), torch::Tensor()};
  }
};

// forward: allreduce (sum the partial products); backward: identity.
struct ReduceFromGroup : torch::autograd::Function<ReduceFromGroup> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, std::int64_t comm) {
    return allreduce_sum(x.clone(), *reinterpret_cast<Communicator*>(comm));
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], torch::Tensor()}; }
};

// forward: gather the output slices; backward: keep this rank's slice of the gradient.
struct GatherFromGroup : torch::autograd::Function<GatherFromGroup> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, std::int64_t comm, std::int64_t total) {
    ctx->saved_data["comm"] = comm;
    ctx->saved_data["total"] = total;
    return gather_last_dim(x, total, *reinterpret_cast<Communicator*>(comm));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Communicator& c = comm_of(ctx);
    const Shard s = shard_of(ctx->saved_data["total"].toInt(), c.size(), c.rank());
    return {grads[0].narrow(-1, s.begin, s.length).contiguous(), torch::Tensor(), torch::Tensor()};
  }
};

// forward: keep this rank's slice of the input; backward: gather the gradient slices.
struct ScatterToGroup : torch::autograd::Function<ScatterToGroup> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, std::int64_t comm) {
    ctx->saved_data["comm"] = comm;
    ctx->saved_data["total"] = x.size(-1);
    Communicator& c = *reinterpret_cast<Communicator*>(comm);
    const Shard s = shard_of(x.size(-1), c.size(), c.rank());
    return x.narrow(-1, s.begin, s.length).contiguous();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {gather_last_dim(grads[0].contiguous(), ctx->saved_data["total"].toInt(), comm_of(ctx)), torch::Tensor()};
  }
};

void check_dense(const torch::Tensor& weight, const torch::Tensor& bias, std::int64_t out, std::int64_t in,
                 const char* layer) {
  DAGR_ENFORCE(weight.dim() == 2 && weight.size(0) == out && weight.size(1) == in, InputError, layer,
               ": the checkpoint's weight is ", weight.sizes(), " but the layer needs [", out, ", ", in, "]");
  DAGR_ENFORCE(bias.dim() == 1 && bias.size(0) == out, InputError, layer, ": the checkpoint's bias is ",
               bias.sizes(), " but the layer needs [", out, "]");
}

// Uniform(-1/sqrt(in), 1/sqrt(in)), as torch::nn::Linear: group rank 0 draws
// the dense tensors and broadcasts them; each rank keeps its slice. So T ranks
// start from the model one process would.
std::pair<torch::Tensor, torch::Tensor> dense_init(std::int64_t in, std::int64_t out, Communicator& group) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  auto w = torch::empty({out, in}).uniform_(-bound, bound);
  auto b = torch::empty({out}).uniform_(-bound, bound);
  group.broadcast(span_of<float>(w), 0);
  group.broadcast(span_of<float>(b), 0);
  return {w, b};
}

}  // namespace

Shard shard_of(std::int64_t total, int ranks, int rank) {
  const std::int64_t base = total / ranks, extra = total % ranks;
  return {rank * base + std::min<std::int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

torch::Tensor gather_along(const torch::Tensor& local, std::int64_t dim, std::int64_t total, Communicator& group) {
  const std::int64_t last = local.dim() - 1;
  if (dim == last || dim == -1) return gather_last_dim(local.contiguous(), total, group);
  return gather_last_dim(local.transpose(dim, last).contiguous(), total, group).transpose(dim, last).contiguous();
}

ColumnParallelLinearImpl::ColumnParallelLinearImpl(std::int64_t in, std::int64_t out, Communicator group,
                                                   bool gather_output)
    : in_(in), out_(out), group_(group), gather_output_(gather_output) {
  DAGR_ENFORCE(out >= group.size(), InputError, "ColumnParallelLinear: ", out, " output features cannot be split over ",
               group.size(), " ranks");
  auto [w, b] = dense_init(in, out, group_);
  register_shard(w, b);
}

ColumnParallelLinearImpl::ColumnParallelLinearImpl(const torch::Tensor& weight, const torch::Tensor& bias,
                                                   Communicator group, bool gather_output)
    : in_(weight.dim() == 2 ? weight.size(1) : 0),
      out_(weight.dim() == 2 ? weight.size(0) : 0),
      group_(group),
      gather_output_(gather_output) {
  DAGR_ENFORCE(out_ >= group.size(), InputError, "ColumnParallelLinear: a weight of ", weight.sizes(),
               " cannot be split by rows over ", group.size(), " ranks");
  register_shard(weight, bias);
}

void ColumnParallelLinearImpl::register_shard(const torch::Tensor& w, const torch::Tensor& b) {
  const Shard s = shard_of(out_, group_.size(), group_.rank());
  weight = register_parameter("weight", torch::empty({s.length, in_}));
  bias = register_parameter("bias", torch::empty({s.length}));
  load_dense(w, b);
}

void ColumnParallelLinearImpl::load_dense(const torch::Tensor& w, const torch::Tensor& b) {
  check_dense(w, b, out_, in_, "ColumnParallelLinear");
  const Shard s = shard_of(out_, group_.size(), group_.rank());
  torch::NoGradGuard no_grad;
  weight.copy_(w.narrow(0, s.begin, s.length));
  bias.copy_(b.narrow(0, s.begin, s.length));
}

std::pair<torch::Tensor, torch::Tensor> ColumnParallelLinearImpl::gather_dense() {
  torch::NoGradGuard no_grad;
  return {gather_along(weight, 0, out_, group_), gather_along(bias, 0, out_, group_)};
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& x) {
  auto y = torch::nn::functional::linear(CopyToGroup::apply(x, handle(group_)), weight, bias);
  return gather_output_ ? GatherFromGroup::apply(y, handle(group_), out_) : y;
}

RowParallelLinearImpl::RowParallelLinearImpl(std::int64_t in, std::int64_t out, Communicator group,
                                             bool input_is_parallel)
    : in_(in), out_(out), group_(group), input_is_parallel_(input_is_parallel) {
  DAGR_ENFORCE(in >= group.size(), InputError, "RowParallelLinear: ", in, " input features cannot be split over ",
               group.size(), " ranks");
  auto [w, b] = dense_init(in, out, group_);
  register_shard(w, b);
}

RowParallelLinearImpl::RowParallelLinearImpl(const torch::Tensor& weight, const torch::Tensor& bias,
                                             Communicator group, bool input_is_parallel)
    : in_(weight.dim() == 2 ? weight.size(1) : 0),
      out_(weight.dim() == 2 ? weight.size(0) : 0),
      group_(group),
      input_is_parallel_(input_is_parallel) {
  DAGR_ENFORCE(in_ >= group.size(), InputError, "RowParallelLinear: a weight of ", weight.sizes(),
               " cannot be split by columns over ", group.size(), " ranks");
  register_shard(weight, bias);
}

void RowParallelLinearImpl::register_shard(const torch::Tensor& w, const torch::Tensor& b) {
  const Shard s = shard_of(in_, group_.size(), group_.rank());
  weight = register_parameter("weight", torch::empty({out_, s.length}));
  bias = register_parameter("bias", torch::empty({out_}));
  load_dense(w, b);
}

void RowParallelLinearImpl::load_dense(const torch::Tensor& w, const torch::Tensor& b) {
  check_dense(w, b, out_, in_, "RowParallelLinear");
  const Shard s = shard_of(in_, group_.size(), group_.rank());
  torch::NoGradGuard no_grad;
  weight.copy_(w.narrow(1, s.begin, s.length));
  bias.copy_(b);
}

std::pair<torch::Tensor, torch::Tensor> RowParallelLinearImpl::gather_dense() {
  torch::NoGradGuard no_grad;
  return {gather_along(weight, 1, in_, group_), bias.clone()};
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& x) {
  auto local = input_is_parallel_ ? x : ScatterToGroup::apply(x, handle(group_));
  auto partial = torch::matmul(local, weight.t());
  return ReduceFromGroup::apply(partial, handle(group_)) + bias;  // the bias once, after the sum
}

TensorParallelMlpImpl::TensorParallelMlpImpl(std::int64_t hidden, Communicator group) {
  fc1 = register_module("fc1", ColumnParallelLinear(784, hidden, group, /*gather_output=*/false));
  fc2 = register_module("fc2", RowParallelLinear(hidden, 10, group, /*input_is_parallel=*/true));
}

torch::Tensor TensorParallelMlpImpl::forward(const torch::Tensor& x) {
  return fc2->forward(torch::relu(fc1->forward(x.flatten(1))));
}

// The dense MLP is Sequential(Flatten, Linear, ReLU, Linear): its parameters in
// order are fc1.weight, fc1.bias, fc2.weight, fc2.bias.
void TensorParallelMlpImpl::load_dense(torch::nn::Sequential& dense) {
  const auto p = dense->parameters();
  DAGR_ENFORCE(p.size() == 4, InputError, "the checkpoint is not the MLP (", p.size(), " parameter tensors, not 4)");
  fc1->load_dense(p[0], p[1]);
  fc2->load_dense(p[2], p[3]);
}

void TensorParallelMlpImpl::gather_into(torch::nn::Sequential& dense) {
  auto p = dense->parameters();
  DAGR_ENFORCE(p.size() == 4, InputError, "the dense model is not the MLP");
  auto [w1, b1] = fc1->gather_dense();
  auto [w2, b2] = fc2->gather_dense();
  torch::NoGradGuard no_grad;
  p[0].copy_(w1);
  p[1].copy_(b1);
  p[2].copy_(w2);
  p[3].copy_(b2);
}

}  // namespace dagr
