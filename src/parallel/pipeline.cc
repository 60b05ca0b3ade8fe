#include "dagr/parallel/pipeline.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "dagr/error.h"
#include "dagr/torch/collectives.h"

namespace dagr {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Bytes of heap in use (arena and mmapped chunks), process-wide.
std::int64_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return static_cast<std::int64_t>(m.uordblks + m.hblkhd);
}

// The header before each tensor: its rank and up to kMaxDims sizes.
constexpr int kMaxDims = 7;
// Forward-only transfers (evaluation) use their own tag, apart from training's.
constexpr int kForwardOnlyTag = std::numeric_limits<int>::max() - 1;

}  // namespace

// Linear partition by dynamic programming: best[k][i] is the smallest possible
// largest sum when the first i layers form k runs; the last run of an optimal
// split of i layers into k starts at the j that attains it.
std::vector<StageBounds> partition_by_cost(const std::vector<double>& costs, int stages) {
  const int n = static_cast<int>(costs.size());
  DAGR_ENFORCE(stages >= 1, InputError, "a pipeline needs at least 1 stage, not ", stages);
  DAGR_ENFORCE(n >= stages, InputError, "a model of ", n, " layers cannot be cut into ", stages, " stages");
  std::vector<double> prefix(static_cast<std::size_t>(n) + 1, 0);
  for (int i = 0; i < n; ++i) prefix[static_cast<std::size_t>(i) + 1] = prefix[static_cast<std::size_t>(i)] + costs[static_cast<std::size_t>(i)];
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(static_cast<std::size_t>(stages) + 1, std::vector<double>(static_cast<std::size_t>(n) + 1, inf));
  std::vector<std::vector<int>> cut(best.size(), std::vector<int>(static_cast<std::size_t>(n) + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= stages; ++k)
    for (int i = k; i <= n; ++i)
      for (int j = k - 1; j < i; ++j) {
        const double v = std::max(best[static_cast<std::size_t>(k) - 1][static_cast<std::size_t>(j)],
                                  prefix[static_cast<std::size_t>(i)] - prefix[static_cast<std::size_t>(j)]);
        if (v < best[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)]) {
          best[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)] = v;
          cut[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)] = j;
        }
      }
  std::vector<StageBounds> bounds(static_cast<std::size_t>(stages));
  for (int k = stages, i = n; k >= 1; --k) {
    const int j = cut[static_cast<std::size_t>(k)][static_cast<std::size_t>(i)];
    bounds[static_cast<std::size_t>(k) - 1] = {j, i};
    i = j;
  }
  return bounds;
}

std::vector<StageBounds> partition_by_parameters(const torch::nn::Sequential& model, int stages) {
  std::vector<double> costs;
  for (const auto& layer : model->children()) {
    double n = 0;
    for (const auto& p : layer->parameters()) n += static_cast<double>(p.numel());
    costs.push_back(std::max(n, 1.0));
  }
  return partition_by_cost(costs, stages);
}

std::vector<StageBounds> partition_by_time(const torch::nn::Sequential& model, const torch::Tensor& sample, int stages,
                                           int repeats) {
  DAGR_ENFORCE(repeats >= 1, InputError, "partition_by_time: repeats must be at least 1");
  std::vector<double> costs;
  torch::Tensor x = sample;
  torch::nn::Sequential layers = model;  // a handle on the same modules, to run them
  for (auto& layer : *layers) {
    std::vector<double> times;
    torch::Tensor out;
    for (int r = 0; r < repeats; ++r) {
      auto in = x.detach().requires_grad_(true);
      const auto t0 = Clock::now();
      out = layer.forward(in);
      out.backward(torch::ones_like(out));
      times.push_back(seconds_since(t0));
    }
    for (auto& p : layer.ptr()->parameters())
      if (p.grad().defined()) p.mutable_grad().reset();
    std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
    costs.push_back(times[static_cast<std::size_t>(repeats / 2)]);
    x = out.detach();
  }
  return partition_by_cost(costs, stages);
}

torch::nn::Sequential make_stage(const torch::nn::Sequential& model, StageBounds b) {
  const auto children = model->children();
  DAGR_ENFORCE(b.begin >= 0 && b.begin < b.end && b.end <= static_cast<int>(children.size()), InputError,
               "stage [", b.begin, ", ", b.end, ") is not a non-empty range of the model's ", children.size(), " layers");
  torch::nn::Sequential layers = model, stage;
  for (int i = b.begin; i < b.end; ++i) stage->push_back(*(layers->begin() + i));
  return stage;
}

PipelineGroups make_pipeline_groups(Communicator& world, int stages, int tensor) {
  DAGR_ENFORCE(stages >= 1 && tensor >= 1 && world.size() % (stages * tensor) == 0, InputError,
               "--pipeline-parallel ", stages, tensor > 1 ? detail::concat(" × --tensor-parallel ", tensor) : "",
               " does not divide the ", world.size(), " workers");
  const int t = world.rank() % tensor, s = world.rank() / tensor % stages, d = world.rank() / (tensor * stages);
  auto pipe = world.split(d * tensor + t, s);
  auto data = world.split(s * tensor + t, d);
  auto split = world.split(d * stages + s, t);
  return {*pipe, *data, *split};
}

PipelineExecutor::PipelineExecutor(torch::nn::Sequential stage, Communicator pipeline, PipelineSchedule schedule,
                                   bool measure_memory)
    : stage_(std::move(stage)),
      pipeline_(std::move(pipeline)),
      schedule_(std::move(schedule)),
      simulation_(simulate(schedule_)),
      measure_memory_(measure_memory) {
  DAGR_ENFORCE(pipeline_.size() == schedule_.stages, InputError, "a schedule of ", schedule_.stages,
               " stages on a pipeline group of ", pipeline_.size(), " ranks");
}

void PipelineExecutor::send_tensor(const torch::Tensor& t, int peer, int tag) {
  DAGR_ENFORCE(t.scalar_type() == torch::kFloat32 && t.dim() <= kMaxDims, InputError,
               "pipeline: stage outputs must be float32 with at most ", kMaxDims, " dimensions, not ", t.scalar_type(),
               " of ", t.dim());
  auto header = torch::zeros({kMaxDims + 1}, torch::kInt64);
  header[0] = t.dim();
  for (int d = 0; d < t.dim(); ++d) header[d + 1] = t.size(d);
  auto data = t.detach().contiguous();
  pending_.push_back({pipeline_.send_async(std::span<const std::int64_t>(header.data_ptr<std::int64_t>(), kMaxDims + 1),
                                           peer, tag),
                      header});
  pending_.push_back(
      {pipeline_.send_async(std::span<const float>(data.data_ptr<float>(), static_cast<std::size_t>(data.numel())),
                            peer, tag),
       data});
}

torch::Tensor PipelineExecutor::recv_tensor(int peer, int tag) {
  std::int64_t header[kMaxDims + 1];
  pipeline_.recv(std::span<std::int64_t>(header, kMaxDims + 1), peer, tag);
  DAGR_ENFORCE(header[0] >= 0 && header[0] <= kMaxDims, Error, "pipeline: a malformed tensor header from rank ", peer);
  std::vector<std::int64_t> sizes(header + 1, header + 1 + header[0]);
  auto t = torch::empty(sizes, torch::kFloat32);
  pipeline_.recv(std::span<float>(t.data_ptr<float>(), static_cast<std::size_t>(t.numel())), peer, tag);
  return t;
}

void PipelineExecutor::wait_sends() {
  for (auto& p : pending_) p.work.wait();
  pending_.clear();
}

// Per micro-batch the executor keeps the stage's input (a leaf that requires
// grad, on stages after the first: its gradient is what goes back), its output
// and, on the last stage, the loss; the backward of a micro-batch frees them.
PipelineStepStats PipelineExecutor::step(const std::vector<torch::Tensor>& inputs, const LossFn& loss) {
  const auto start = Clock::now();
  const int s = pipeline_.rank(), P = schedule_.stages, M = schedule_.micro_batches;
  const bool first = s == 0, last = s == P - 1;
  DAGR_ENFORCE(!first || static_cast<int>(inputs.size()) == M, InputError, "pipeline: ", inputs.size(),
               " input micro-batches for a schedule of ", M);
  struct InFlight {
    torch::Tensor input, output, loss, grad_output;
    std::int64_t bytes = 0;
  };
  std::vector<InFlight> mb(static_cast<std::size_t>(M));
  PipelineStepStats stats;
  if (last) stats.outputs.resize(static_cast<std::size_t>(M));
  int in_flight = 0;
  std::int64_t held = 0;
  try {
    for (const Action& a : schedule_.ranks[static_cast<std::size_t>(s)]) {
      InFlight& m = mb[static_cast<std::size_t>(a.micro_batch)];
      const auto t0 = Clock::now();
      switch (a.kind) {
        case ActionKind::recv_activation:
          m.input = recv_tensor(s - 1, activation_tag(a.micro_batch)).requires_grad_(true);
          stats.recv_seconds += seconds_since(t0);
          break;
        case ActionKind::recv_gradient:
          m.grad_output = recv_tensor(s + 1, gradient_tag(a.micro_batch));
          stats.recv_seconds += seconds_since(t0);
          break;
        case ActionKind::send_activation:
          send_tensor(m.output, s + 1, activation_tag(a.micro_batch));
          stats.send_seconds += seconds_since(t0);
          break;
        case ActionKind::send_gradient:
          send_tensor(m.input.grad(), s - 1, gradient_tag(a.micro_batch));
          m.input = torch::Tensor();
          stats.send_seconds += seconds_since(t0);
          break;
        case ActionKind::forward: {
          const std::int64_t heap0 = measure_memory_ ? heap_in_use() : 0;
          if (first) m.input = inputs[static_cast<std::size_t>(a.micro_batch)];
          m.output = stage_->forward(m.input);
          if (last) {
            m.loss = loss(a.micro_batch, m.output);
            stats.loss += m.loss.item<double>();
            stats.outputs[static_cast<std::size_t>(a.micro_batch)] = m.output.detach();
          }
          if (measure_memory_) {
            m.bytes = heap_in_use() - heap0;
            held += m.bytes;
            stats.peak_activation_bytes = std::max(stats.peak_activation_bytes, held);
          }
          stats.peak_in_flight = std::max(stats.peak_in_flight, ++in_flight);
          stats.compute_seconds += seconds_since(t0);
          break;
        }
        case ActionKind::backward: {
          // A first stage of layers without parameters (a lone Flatten) has
          // nothing to differentiate: its output does not require grad.
          if (last) m.loss.backward();
          else if (m.output.requires_grad()) torch::autograd::backward({m.output}, {m.grad_output});
          m.output = m.loss = m.grad_output = torch::Tensor();
          if (first) m.input = torch::Tensor();
          held -= m.bytes;
          --in_flight;
          stats.compute_seconds += seconds_since(t0);
          break;
        }
      }
    }
    const auto t0 = Clock::now();
    wait_sends();
    stats.send_seconds += seconds_since(t0);
  } catch (...) {
    // The sends still read their buffers: let them finish (or fail) first.
    for (auto& p : pending_) try {
        p.work.wait();
      } catch (...) {
      }
    pending_.clear();
    throw;
  }
  stats.wall_seconds = seconds_since(start);
  return stats;
}

torch::Tensor PipelineExecutor::forward(const torch::Tensor& input) {
  torch::NoGradGuard no_grad;
  const int s = pipeline_.rank(), P = pipeline_.size();
  torch::Tensor x = s == 0 ? input : recv_tensor(s - 1, kForwardOnlyTag);
  torch::Tensor y = stage_->forward(x);
  if (s == P - 1) return y;
  send_tensor(y, s + 1, kForwardOnlyTag);
  wait_sends();
  return torch::Tensor();
}

void average_gradients(torch::nn::Module& stage, Communicator& data) {
  if (data.size() == 1) return;
  std::vector<torch::Tensor> grads;
  for (auto& p : stage.parameters()) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad().view(-1));
  }
  if (grads.empty()) return;
  auto flat = torch::cat(grads);
  allreduce(data, flat, ReduceOp::avg);
  std::int64_t offset = 0;
  for (auto& g : grads) {
    g.copy_(flat.narrow(0, offset, g.numel()));
    offset += g.numel();
  }
}

void gather_stages(torch::nn::Sequential& model, const std::vector<StageBounds>& bounds, Communicator& pipeline) {
  DAGR_ENFORCE(static_cast<int>(bounds.size()) == pipeline.size(), InputError, bounds.size(),
               " stage bounds for a pipeline of ", pipeline.size());
  torch::NoGradGuard no_grad;
  const int s = pipeline.rank();
  for (int from = 1; from < pipeline.size(); ++from) {
    if (s != 0 && s != from) continue;
    auto stage = make_stage(model, bounds[static_cast<std::size_t>(from)]);
    auto tensors = stage->parameters();
    for (auto& b : stage->buffers()) tensors.push_back(b);
    for (auto& t : tensors) {
      DAGR_ENFORCE(t.is_contiguous(), Error, "gather_stages: a parameter that is not contiguous");
      if (s == from) send(pipeline, t, 0);
      else recv(pipeline, t, from);
    }
  }
}

}  // namespace dagr
