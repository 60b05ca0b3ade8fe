#include "dagr/train/powersgd.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "dagr/error.h"
#include "dagr/torch/tensor.h"
#include "train/hook_check.h"
#include "train/powersgd_kernels.h"

namespace dagr {
namespace {
struct Layout;
}  // namespace

struct PowerSgdHook::State {
  PowerSgdOptions options;
  std::shared_ptr<CommHook> uncompressed;    // options.uncompressed_hook, or allreduce_hook()
  std::int64_t iter = 0;                     // steps begun (counted at each step's last bucket)
  std::map<std::size_t, torch::Tensor> q;    // by parameter index: the last step's averaged Q (m × r)
  std::map<std::size_t, torch::Tensor> error;  // by parameter index: this rank's error E (n × m), contiguous
  std::map<std::size_t, std::shared_ptr<Layout>> layouts;  // by bucket index
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

// A bucket's compression: where each compressed matrix and each uncompressed
// gradient lies in the bucket, and the buffers the two collectives send. Laid
// out at the bucket's first compressed step and kept while the bucket keeps
// its layout (dtype, parameters, shapes, check), so that a step runs
// PowerSGD's loops over raw memory and hardly a libtorch operation of its own:
// making the views and buffers anew each step cost about 40 µs of dispatch, a
// tenth of PowerSGD's time in the built-in MLP's step. Offsets, not views of
// the bucket: a step DDP gives up sends a stand-in buffer of zeros through the
// same layout, and the bucket's memory may go while the layout stays.
struct Layout {
  struct Matrix {
    std::size_t param;             // DDP's index of its parameter
    std::int64_t offset;           // in the bucket, in elements
    std::int64_t n, cols, r;       // n × cols, approximated at rank r
    std::int64_t p_at, q_at;       // its P (n × r) in p_all, its Q (cols × r) in q_all
    torch::Tensor copy;            // for a 16-bit bucket: the matrix in `type` (else undefined)
    torch::Tensor error;           // with error feedback: State::error's (n × cols, contiguous)
  };
  struct Slice {
    std::int64_t offset, numel;  // in the bucket, in elements
  };
  torch::ScalarType type;                  // of the arithmetic: float32, or float64 for float64 buckets
  torch::ScalarType bucket_type;
  std::vector<std::size_t> parameters;     // what the layout was made for (GradBucket's)
  std::vector<std::vector<std::int64_t>> shapes;
  std::int64_t check = 0;
  std::vector<Matrix> matrices;
  std::vector<Slice> plain;                // gradients that go uncompressed
  std::int64_t plain_size = 0, p_size = 0, q_size = 0;
  torch::Tensor sent_first;                // [plain / N, check, P]: summed in one allreduce
  torch::Tensor p_all, q_all;              // views of sent_first, and Q's own buffer

  bool fits(const GradBucket& b) const {
    return b.buffer.scalar_type() == bucket_type && b.parameters == parameters && b.shapes == shapes &&
           b.check == check;
  }
};

// What a step's continuations need: the layout (held, so that the next step
// lays out afresh if this one is still in flight) and the bucket.
struct Job {
  std::shared_ptr<Layout> layout;
  torch::Tensor buffer;  // the bucket's
  int world;
};

torch::Tensor flatten_all(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

template <class T>
T* at_offset(const torch::Tensor& buffer, std::int64_t offset) {
  return static_cast<T*>(buffer.data_ptr()) + offset;
}

// The matrix's n × cols values in `T`: in the bucket, or its copy for 16-bit buckets.
template <class T>
T* matrix_data(const Job& job, const Layout::Matrix& mat) {
  return mat.copy.defined() ? mat.copy.data_ptr<T>() : at_offset<T>(job.buffer, mat.offset);
}

torch::Tensor slice_of(const torch::Tensor& buffer, std::int64_t offset, std::int64_t numel) {
  return buffer.narrow(0, offset, numel);
}

// The layout of `bucket` for options `o`, its error buffers taken from (or
// made in) `errors`.
std::shared_ptr<Layout> lay_out(const GradBucket& bucket, const PowerSgdOptions& o,
                                std::map<std::size_t, torch::Tensor>& errors) {
  auto l = std::make_shared<Layout>();
  l->bucket_type = bucket.buffer.scalar_type();
  l->type = l->bucket_type == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  l->parameters = bucket.parameters;
  l->shapes = bucket.shapes;
  l->check = bucket.check;
  const auto options = torch::TensorOptions().dtype(l->type);
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < bucket.shapes.size(); ++i) {
    const auto& shape = bucket.shapes[i];
    std::int64_t numel = 1;
    for (std::int64_t d : shape) numel *= d;
    const std::int64_t n = shape.empty() ? 1 : shape[0], cols = n > 0 ? numel / n : 0;
    const std::int64_t r = std::min({n, cols, static_cast<std::int64_t>(o.rank)});
    if (shape.size() >= 2 && numel > 0 &&
        static_cast<double>(n * cols) > static_cast<double>((n + cols) * r) * o.min_compression_rate) {
      Layout::Matrix mat{bucket.parameters[i], offset, n, cols, r, l->p_size, l->q_size, {}, {}};
      if (l->bucket_type != l->type) mat.copy = torch::empty({n, cols}, options);
      if (o.error_feedback) {  // E kept from step to step: zeros where it is not (yet) the matrix's shape and type
        torch::Tensor& e = errors[mat.param];
        if (!e.defined() || e.sizes() != torch::IntArrayRef{n, cols} || e.scalar_type() != l->type)
          e = torch::zeros({n, cols}, options);
        if (!e.is_contiguous()) e = e.contiguous();  // the loops read rows
        mat.error = e;
      }
      l->p_size += n * r;
      l->q_size += cols * r;
      l->matrices.push_back(std::move(mat));
    } else if (numel > 0) {
      l->plain.push_back({offset, numel});
      l->plain_size += numel;
    }
    offset += numel;
  }
  if (l->matrices.empty()) return l;  // the bucket goes to the uncompressed hook whole: no buffers
  l->sent_first = torch::empty({l->plain_size + l->check + l->p_size}, options);
  l->p_all = l->sent_first.narrow(0, l->plain_size + l->check, l->p_size);
  l->q_all = torch::empty({l->q_size}, options);
  return l;
}

// The uncompressed gradients, divided by the world size, and the check values
// into sent_first; and back out of it once summed.
template <class T>
void pack_plain(const Job& job) {
  const Layout& l = *job.layout;
  T* to = l.sent_first.data_ptr<T>();
  const bool same = l.bucket_type == l.type;
  for (const auto& slice : l.plain) {
    if (same) {
      const T* from = at_offset<T>(job.buffer, slice.offset);
      for (std::int64_t i = 0; i < slice.numel; ++i) to[i] = from[i] / static_cast<T>(job.world);
    } else {
      l.sent_first.narrow(0, to - l.sent_first.data_ptr<T>(), slice.numel)
          .copy_(slice_of(job.buffer, slice.offset, slice.numel))
          .div_(job.world);
    }
    to += slice.numel;
  }
  if (l.check == 0) return;
  if (same)
    std::copy_n(at_offset<T>(job.buffer, job.buffer.numel() - l.check), l.check, to);
  else
    l.sent_first.narrow(0, l.plain_size, l.check).copy_(slice_of(job.buffer, job.buffer.numel() - l.check, l.check));
}

template <class T>
void unpack_plain(const Job& job) {
  const Layout& l = *job.layout;
  const T* from = l.sent_first.data_ptr<T>();
  const bool same = l.bucket_type == l.type;
  for (const auto& slice : l.plain) {
    if (same)
      std::copy(from, from + slice.numel, at_offset<T>(job.buffer, slice.offset));
    else
      slice_of(job.buffer, slice.offset, slice.numel).copy_(l.sent_first.narrow(0, from - l.sent_first.data_ptr<T>(), slice.numel));
    from += slice.numel;
  }
  if (l.check > 0)
    detail::write_check_average(slice_of(job.buffer, job.buffer.numel() - l.check, l.check),
                                l.sent_first.narrow(0, l.plain_size, l.check), job.world);
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

  // The bucket's layout: kept from its last step, unless that step is still
  // in flight (a continuation holds it) or the bucket changed.
  DAGR_ENFORCE(bucket.buffer.is_contiguous(), InputError, "PowerSGD: the bucket's buffer must be contiguous");
  std::shared_ptr<Layout>& kept = s.layouts[bucket.index];
  if (!kept || kept.use_count() > 1 || !kept->fits(bucket)) kept = lay_out(bucket, o, s.error);
  auto job = std::make_shared<Job>(Job{kept, bucket.buffer, comm.size()});
  const Layout& l = *kept;

  // A bucket with nothing to compress goes to the uncompressed hook whole.
  // Else the uncompressed gradients' values, side by side, are summed,
  // divided by N first, in the allreduce of the Ps (one collective, one round
  // trip fewer), and DDP's check values ride along, summed undivided beside
  // the Ps and divided after (exactly a float allreduce's average).
  count(l.plain_size + l.p_size + l.q_size);
  if (l.matrices.empty()) return s.uncompressed->run(comm, bucket);

  // P = (M + E) Q for every matrix, summed over the ranks in one allreduce.
  with_type(l.type, [&](auto zero) {
    using T = decltype(zero);
    pack_plain<T>(*job);
    for (const Layout::Matrix& mat : l.matrices) {
      if (mat.copy.defined()) mat.copy.copy_(slice_of(job->buffer, mat.offset, mat.n * mat.cols).view({mat.n, mat.cols}));
      T* q = l.q_all.data_ptr<T>() + mat.q_at;
      const auto last = s.q.find(mat.param);
      if (o.warm_start && last != s.q.end() && last->second.sizes() == torch::IntArrayRef{mat.cols, mat.r}) {
        const torch::Tensor& from = last->second;
        if (from.scalar_type() == l.type && from.is_contiguous())
          std::copy_n(from.data_ptr<T>(), mat.cols * mat.r, q);
        else  // as a checkpoint may give it
          l.q_all.narrow(0, mat.q_at, mat.cols * mat.r).view({mat.cols, mat.r}).copy_(from);
      } else {  // the same random Q on every rank: seeded by (seed, step, parameter)
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
            mix(o.seed ^ mix(static_cast<std::uint64_t>(step) ^ mix(mat.param))));
        l.q_all.narrow(0, mat.q_at, mat.cols * mat.r).copy_(torch::randn({mat.cols * mat.r}, gen, l.q_all.options()));
      }
      powersgd::orthogonalize(q, mat.cols, mat.r);
      powersgd::project(matrix_data<T>(*job, mat), mat.error.defined() ? mat.error.data_ptr<T>() : nullptr, q,
                        l.p_all.data_ptr<T>() + mat.p_at, mat.n, mat.cols, mat.r);
    }
  });
  // Then: P orthogonalised, Q = (M + E)ᵀ P averaged over the ranks, M̂ = P Qᵀ into the gradient, E = M + E − M̂.
  std::shared_ptr<State> state = state_;
  auto decompress = [job, state] {
    const Layout& l = *job->layout;
    with_type(l.type, [&](auto zero) {
      using T = decltype(zero);
      for (const Layout::Matrix& mat : l.matrices) {
        T* m = matrix_data<T>(*job, mat);
        const T* q = l.q_all.data_ptr<T>() + mat.q_at;
        powersgd::reconstruct(m, mat.error.defined() ? mat.error.data_ptr<T>() : nullptr,
                              l.p_all.data_ptr<T>() + mat.p_at, q, mat.n, mat.cols, mat.r);
        if (mat.copy.defined())  // back into the 16-bit gradient
          slice_of(job->buffer, mat.offset, mat.n * mat.cols).copy_(mat.copy.view({-1}));
        if (state->options.warm_start) {  // the state's own copy: the layout's Q is next step's to overwrite
          torch::Tensor& saved = state->q[mat.param];
          if (!saved.defined() || saved.sizes() != torch::IntArrayRef{mat.cols, mat.r} || saved.scalar_type() != l.type ||
              !saved.is_contiguous())
            saved = torch::empty({mat.cols, mat.r}, l.q_all.options());
          std::copy_n(q, mat.cols * mat.r, saved.data_ptr<T>());
        }
      }
    });
    return HookWork();
  };
  auto compute_q = [job, decompress, comm]() mutable {
    const Layout& l = *job->layout;
    with_type(l.type, [&](auto zero) {
      using T = decltype(zero);
      unpack_plain<T>(*job);
      for (const Layout::Matrix& mat : l.matrices) {
        T* p = l.p_all.data_ptr<T>() + mat.p_at;
        powersgd::orthogonalize(p, mat.n, mat.r);
        powersgd::project_back(matrix_data<T>(*job, mat), p, l.q_all.data_ptr<T>() + mat.q_at, mat.n, mat.cols, mat.r);
      }
    });
    // This runs inside HookWork::wait, whose thread would only wait for an
    // allreduce handed to the communication thread: it runs here instead.
    average(comm, l.q_all, ReduceOp::avg);
    return decompress();
  };
  if (bucket.last)
    return HookWork::when_waited([job, comm, compute_q]() mutable {
      average(comm, job->layout->sent_first, ReduceOp::sum);
      return compute_q();
    });
  return HookWork(average_async(comm, l.sent_first, ReduceOp::sum), compute_q);
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
  s.layouts.clear();  // they hold the errors
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
