#include "dagr/train/powersgd.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "dagr/error.h"
#include "dagr/torch/tensor.h"
#include "train/hook_check.h"
#include "train/powersgd_kernels.h"

namespace dagr {

struct PowerSgdHook::State {
  PowerSgdOptions options;
  std::shared_ptr<CommHook> uncompressed;    // options.uncompressed_hook, or allreduce_hook()
  std::int64_t iter = 0;                     // steps begun (counted at each step's last bucket)
  std::map<std::size_t, torch::Tensor> q;    // by parameter index: the last step's averaged Q (m × r)
  std::map<std::size_t, torch::Tensor> error;  // by parameter index: this rank's error E (n × m), contiguous
  std::int64_t step_sent = 0, step_dense = 0, sent = 0, dense = 0;
};

namespace {

Work average_async(Communicator& comm, const torch::Tensor& t, ReduceOp op) {
  return visit_span(t, "PowerSGD", [&](auto data) { return comm.allreduce_async(data, op); });
}

void average(Communicator& comm, const torch::Tensor& t, ReduceOp op) {
  visit_span(t, "PowerSGD", [&](auto data) { comm.allreduce(data, op); });
}

// Calls f with a value of the C++ type of `type`: float32, or float64.
template <class F>
void with_type(torch::ScalarType type, F&& f) {
  if (type == torch::kFloat64)
    f(double{});
  else
    f(float{});
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// One bucket's compression in flight.
struct Job {
  torch::ScalarType type;                  // float32, or float64 for float64 buckets
  std::vector<std::size_t> params;         // the compressed matrices' parameters
  std::vector<torch::Tensor> grads;        // their gradients (views of the bucket)
  std::vector<torch::Tensor> m;            // the same as n × m matrices of `type` (views, or copies for 16-bit);
                                           // A = M + E from the projection on, P Qᵀ after the reconstruction
  std::vector<torch::Tensor> error;        // with error feedback: State::error's
  std::vector<torch::Tensor> p, q;         // views of p_all, q_all
  torch::Tensor p_all, q_all;
  std::vector<torch::Tensor> plain;        // gradients that go uncompressed (views of the bucket)
  torch::Tensor plain_all;                 // their values side by side, divided by N: a view of sent_first
  torch::Tensor check;                     // DDP's check values (a view of the bucket; may be empty)
  torch::Tensor sent_first;                // [plain_all / N, check, p_all]: summed in one allreduce
};

torch::Tensor flatten_all(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

}  // namespace

PowerSgdHook::PowerSgdHook(PowerSgdOptions options) : state_(std::make_shared<State>()) {
  DAGR_ENFORCE(options.rank >= 1, InputError, "PowerSGD: the rank must be at least 1, not ", options.rank);
  DAGR_ENFORCE(options.start_iter >= 0, InputError, "PowerSGD: start_iter must not be negative, not ", options.start_iter);
  DAGR_ENFORCE(options.min_compression_rate >= 0, InputError,
               "PowerSGD: min_compression_rate must not be negative, not ", options.min_compression_rate);
  state_->uncompressed = options.uncompressed_hook ? options.uncompressed_hook : allreduce_hook();
  DAGR_ENFORCE(state_->uncompressed->carries_check() || state_->uncompressed->plain_average(), InputError,
               "PowerSGD: the uncompressed hook '", state_->uncompressed->name(),
               "' must carry DDP's check values (as allreduce, fp16 and bf16 do)");
  state_->options = std::move(options);
}

PowerSgdHook::~PowerSgdHook() = default;

std::shared_ptr<PowerSgdHook> powersgd_hook(PowerSgdOptions options) {
  return std::make_shared<PowerSgdHook>(std::move(options));
}

std::int64_t PowerSgdHook::iteration() const { return state_->iter; }
std::int64_t PowerSgdHook::sent_elements() const { return state_->sent; }
std::int64_t PowerSgdHook::dense_elements() const { return state_->dense; }

HookWork PowerSgdHook::run(Communicator& comm, GradBucket& bucket) {
  State& s = *state_;
  const PowerSgdOptions& o = s.options;
  const std::int64_t step = s.iter;
  auto count = [&](std::int64_t sent) {
    s.step_sent += sent;
    s.step_dense += bucket.buffer.numel() - bucket.check;
    if (!bucket.last) return;
    ++s.iter;
    s.sent = std::exchange(s.step_sent, 0);
    s.dense = std::exchange(s.step_dense, 0);
  };
  if (step < o.start_iter) {
    count(bucket.buffer.numel());
    return s.uncompressed->run(comm, bucket);
  }

  auto job = std::make_shared<Job>();
  job->type = bucket.buffer.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const auto grads = bucket.gradients();
  job->check = bucket.buffer.narrow(0, bucket.buffer.numel() - bucket.check, bucket.check);
  std::int64_t p_size = 0, q_size = 0;
  std::vector<std::int64_t> ranks;
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const torch::Tensor& g = grads[i];
    if (g.dim() >= 2 && g.numel() > 0) {
      const std::int64_t n = g.size(0), m = g.numel() / n;
      const std::int64_t r = std::min({n, m, static_cast<std::int64_t>(o.rank)});
      if (static_cast<double>(n * m) > static_cast<double>((n + m) * r) * o.min_compression_rate) {
        job->params.push_back(bucket.parameters[i]);
        job->grads.push_back(g);
        job->m.push_back(g.scalar_type() == job->type ? g.view({n, m}) : g.reshape({n, m}).to(job->type));
        ranks.push_back(r);
        p_size += n * r;
        q_size += m * r;
        continue;
      }
    }
    job->plain.push_back(g);
  }

  // A bucket with nothing to compress goes to the uncompressed hook whole.
  // Else the uncompressed gradients' values, side by side, are summed,
  // divided by N first, in the allreduce of the Ps (one collective, one round
  // trip fewer), and DDP's check values ride along, summed undivided beside
  // the Ps and divided after (exactly a float allreduce's average).
  std::int64_t plain_elements = 0;
  for (const auto& g : job->plain) plain_elements += g.numel();
  count(plain_elements + p_size + q_size);
  if (job->m.empty()) return s.uncompressed->run(comm, bucket);
  if (!job->plain.empty()) job->plain_all = flatten_all(job->plain);
  const int world = comm.size();
  auto unpack_plain = [job, world] {
    std::int64_t offset = 0;
    for (auto& g : job->plain) {
      g.copy_(job->plain_all.narrow(0, offset, g.numel()).view(g.sizes()));
      offset += g.numel();
    }
    if (job->check.numel() > 0)
      detail::write_check_average(job->check, job->sent_first.narrow(0, offset, job->check.numel()), world);
  };

  // P = (M + E) Q for every matrix, summed over the ranks in one allreduce.
  const auto options = torch::TensorOptions().dtype(job->type);
  const std::int64_t plain_size = job->plain_all.defined() ? job->plain_all.numel() : 0;
  const std::int64_t check_size = job->check.numel();
  job->sent_first = torch::empty({plain_size + check_size + p_size}, options);
  if (plain_size) {
    job->sent_first.narrow(0, 0, plain_size).copy_(job->plain_all).div_(comm.size());
    job->plain_all = job->sent_first.narrow(0, 0, plain_size);
  }
  if (check_size) job->sent_first.narrow(0, plain_size, check_size).copy_(job->check);
  job->p_all = job->sent_first.narrow(0, plain_size + check_size, p_size);
  job->q_all = torch::empty({q_size}, options);
  std::int64_t p_at = 0, q_at = 0;
  for (std::size_t k = 0; k < job->m.size(); ++k) {
    torch::Tensor& m = job->m[k];
    const std::size_t param = job->params[k];
    const std::int64_t n = m.size(0), cols = m.size(1), r = ranks[k];
    if (o.error_feedback) {  // E kept from step to step: zeros where it is not (yet) m's shape and type
      torch::Tensor& e = s.error[param];
      if (!e.defined() || e.sizes() != m.sizes() || e.scalar_type() != job->type) e = torch::zeros_like(m);
      if (!e.is_contiguous()) e = e.contiguous();  // the loops read rows
      job->error.push_back(e);
    }
    torch::Tensor q = job->q_all.narrow(0, q_at, cols * r).view({cols, r});
    torch::Tensor p = job->p_all.narrow(0, p_at, n * r).view({n, r});
    q_at += cols * r;
    p_at += n * r;
    const auto last = s.q.find(param);
    if (o.warm_start && last != s.q.end() && last->second.sizes() == q.sizes()) {
      q.copy_(last->second);
    } else {  // the same random Q on every rank: seeded by (seed, step, parameter)
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
          mix(o.seed ^ mix(static_cast<std::uint64_t>(step) ^ mix(param))));
      q.copy_(torch::randn({cols, r}, gen, options));
    }
    with_type(job->type, [&](auto zero) {
      using T = decltype(zero);
      powersgd::orthogonalize(q.data_ptr<T>(), cols, r);
      powersgd::project(m.data_ptr<T>(), o.error_feedback ? job->error[k].data_ptr<T>() : nullptr, q.data_ptr<T>(),
                        p.data_ptr<T>(), n, cols, r);
    });
    job->p.push_back(p);
    job->q.push_back(q);
  }
  // Then: P orthogonalised, Q = (M + E)ᵀ P averaged over the ranks, M̂ = P Qᵀ into the gradient, E = M + E − M̂.
  std::shared_ptr<State> state = state_;
  auto decompress = [job, state] {
    for (std::size_t k = 0; k < job->m.size(); ++k) {
      torch::Tensor& m = job->m[k];
      with_type(job->type, [&](auto zero) {
        using T = decltype(zero);
        powersgd::reconstruct(m.data_ptr<T>(), job->error.empty() ? nullptr : job->error[k].data_ptr<T>(),
                              job->p[k].data_ptr<T>(), job->q[k].data_ptr<T>(), m.size(0), m.size(1),
                              job->p[k].size(1));
      });
      if (m.data_ptr() != job->grads[k].data_ptr())  // a float32 copy of a 16-bit gradient
        job->grads[k].copy_(m.view(job->grads[k].sizes()));
      if (state->options.warm_start) state->q[job->params[k]] = job->q[k];
    }
    return HookWork();
  };
  auto compute_q = [job, decompress, comm]() mutable {
    for (std::size_t k = 0; k < job->m.size(); ++k) {
      with_type(job->type, [&](auto zero) {
        using T = decltype(zero);
        torch::Tensor& p = job->p[k];
        powersgd::orthogonalize(p.data_ptr<T>(), p.size(0), p.size(1));
        powersgd::project_back(job->m[k].data_ptr<T>(), p.data_ptr<T>(), job->q[k].data_ptr<T>(), p.size(0),
                               job->q[k].size(0), p.size(1));
      });
    }
    // This runs inside HookWork::wait, whose thread would only wait for an
    // allreduce handed to the communication thread: it runs here instead.
    average(comm, job->q_all, ReduceOp::avg);
    return decompress();
  };
  auto after_p = [unpack_plain, compute_q]() mutable {
    unpack_plain();
    return compute_q();
  };
  if (bucket.last)
    return HookWork::when_waited([job, comm, after_p]() mutable {
      average(comm, job->sent_first, ReduceOp::sum);
      return after_p();
    });
  return HookWork(average_async(comm, job->sent_first, ReduceOp::sum), after_p);
}

std::map<std::string, torch::Tensor> PowerSgdHook::state(Communicator& comm) {
  const State& s = *state_;
  std::map<std::string, torch::Tensor> out;
  out["powersgd/iter"] = torch::tensor(s.iter, torch::kInt64);
  for (const auto& [param, q] : s.q) out["powersgd/q/" + std::to_string(param)] = q.clone();
  if (!s.error.empty()) {
    // Every rank holds errors for the same parameters (they depend on shapes only).
    std::vector<torch::Tensor> errors;
    for (const auto& item : s.error) errors.push_back(item.second);
    torch::Tensor all = flatten_all(errors).to(torch::kFloat64);
    visit_span(all, "PowerSGD errors", [&](auto data) { comm.allreduce(data, ReduceOp::avg); });
    std::int64_t offset = 0;
    for (const auto& [param, e] : s.error) {
      out["powersgd/error/" + std::to_string(param)] =
          all.narrow(0, offset, e.numel()).view(e.sizes()).to(e.scalar_type()).clone();
      offset += e.numel();
    }
  }
  return out;
}

void PowerSgdHook::load_state(const std::map<std::string, torch::Tensor>& state) {
  State& s = *state_;
  s.q.clear();
  s.error.clear();
  s.iter = 0;
  for (const auto& [key, t] : state) {
    if (key == "powersgd/iter") {
      s.iter = t.item<std::int64_t>();
    } else if (key.starts_with("powersgd/q/")) {
      s.q[std::stoul(key.substr(11))] = t.clone();
    } else if (key.starts_with("powersgd/error/")) {
      s.error[std::stoul(key.substr(15))] = t.clone(at::MemoryFormat::Contiguous);
    } else {
      throw InputError(detail::concat("PowerSGD: unknown state '", key, "' (from a checkpoint of another hook?)"));
    }
  }
}

}  // namespace dagr
