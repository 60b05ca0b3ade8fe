#include "dagr/train/ddp.h"

#include <chrono>
#include <cmath>
#include <mutex>

#include "dagr/error.h"
#include "dagr/torch/compat.h"
#include "dagr/torch/tensor.h"

namespace dagr {
namespace {

void broadcast_tensor(Communicator& comm, const torch::Tensor& t, const std::string& name) {
  visit_span(t, detail::concat("DDP: ", name), [&](auto data) { comm.broadcast(data, 0); });
}

// The last bucket carries kTailFloats more floats after the gradients, averaged
// with them: 1 when this rank finished its backward (0 when it gave it up), and
// the step number s mod 64 and its square — equal averages on every rank mean
// every rank reduced the same step (small integers: exact in float32).
constexpr std::int64_t kTailFloats = 3;
constexpr std::int64_t kStepModulus = 64;

struct Bucket {
  torch::Tensor flat;            // float32, every member's gradient side by side (+ the tail in the last)
  std::vector<std::size_t> members;  // parameter indices
  int pending = 0;               // members not yet ready this step
  Work work;
};

}  // namespace

struct DistributedDataParallel::State : std::enable_shared_from_this<DistributedDataParallel::State> {
  Communicator comm;
  DdpOptions options;
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> views;        // params[i]'s slice of its bucket
  std::vector<std::size_t> bucket_of;
  std::vector<Bucket> buckets;
  std::vector<bool> ready;                 // this step
  std::vector<std::shared_ptr<void>> accumulators;  // kept alive: the hooks live on them
  std::size_t next_bucket = 0;             // buckets start strictly in this order
  bool in_backward = false;
  int no_sync_depth = 0;
  bool active = true;
  std::int64_t generation = 0;             // backward passes begun; the same count on every rank
  std::string broken;                      // set when a collective failed: every later backward raises
  DdpStats stats;

  explicit State(Communicator c) : comm(std::move(c)) {}

  // The gradient must live in the bucket. It does unless the optimizer reset it
  // (set_to_none) and autograd made a fresh tensor: then move it in.
  void adopt_gradient(std::size_t i) {
    torch::Tensor& grad = params[i].mutable_grad();
    if (grad.defined() && grad.data_ptr() == views[i].data_ptr()) return;
    if (grad.defined()) views[i].copy_(grad);
    else views[i].zero_();
    grad = views[i];
  }

  void on_gradient_ready(std::size_t i) {
    if (!active || comm.size() == 1) return;  // a group of one has nothing to average
    if (!in_backward) {
      DAGR_ENFORCE(broken.empty(), Error, "DDP: cannot reduce gradients any more: ", broken);
      in_backward = true;
      std::fill(ready.begin(), ready.end(), false);
      for (Bucket& b : buckets) b.pending = static_cast<int>(b.members.size());
      next_bucket = 0;
      ++generation;
      // The guard lives as long as autograd's record of this backward; when
      // that ends without the callback having finished the step (an exception
      // anywhere in backward), its destructor gives the step up (abandon()).
      auto guard = std::make_shared<BackwardGuard>(weak_from_this(), generation);
      torch_compat::at_end_of_backward([this, guard] { finish_backward(); });
    }
    adopt_gradient(i);
    if (ready[i]) return;
    ready[i] = true;
    if (no_sync_depth > 0) return;
    --buckets[bucket_of[i]].pending;
    start_ready_buckets(/*final=*/false);
  }

  // Starts, in order, every bucket whose gradients are all in. The last bucket
  // runs on this thread: once it is ready, backward has nothing left to overlap.
  void start_ready_buckets(bool final) {
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0) {
      Bucket& b = buckets[next_bucket++];
      if (next_bucket == buckets.size()) {
        write_tail(b.flat, /*finished=*/true);
        const auto start = std::chrono::steady_clock::now();
        collective([&] { comm.allreduce(span_of<float>(b.flat), ReduceOp::avg); });
        stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      } else {
        collective([&] { b.work = comm.allreduce_async(span_of<float>(b.flat), ReduceOp::avg); });
        if (!final) ++stats.buckets_overlapped;  // started while backward still runs
      }
    }
  }

  // A collective that fails leaves the ranks at different points of the
  // step: nothing can be reduced with them again.
  template <class F>
  void collective(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      broken = detail::concat("a collective failed in step ", generation, ": ", e.what());
      throw;
    }
  }

  void write_tail(torch::Tensor& flat, bool finished) {
    const float s = static_cast<float>(generation % kStepModulus);
    float* tail = flat.data_ptr<float>() + flat.numel() - kTailFloats;
    tail[0] = finished ? 1.0f : 0.0f;
    tail[1] = s;
    tail[2] = s * s;
  }

  // After the last bucket: did every rank finish this backward, and was it the
  // same step everywhere? The tail holds the averages (see kTailFloats).
  void check_tail() {
    const Bucket& last = buckets.back();
    const float* tail = last.flat.data_ptr<float>() + last.flat.numel() - kTailFloats;
    const double slack = 0.5 / comm.size(), s = static_cast<double>(generation % kStepModulus);
    if (std::abs(tail[1] - s) > slack || std::abs(tail[2] - s * s) > slack) {
      broken = detail::concat("the ranks are at different steps (this rank's backward pass ", generation,
                              " met another pass of some rank, e.g. one ran more backward passes under no_sync)");
      throw Error(detail::concat("DDP: ", broken));
    }
    DAGR_ENFORCE(tail[0] > 1.0 - slack, Error, "DDP: another rank failed during step ", generation,
                 "'s backward; the gradients were not averaged, so no rank may take this optimizer step (every "
                 "rank's backward raises, and the next step goes on as usual)");
  }

  // The backward of this step ended by an exception before finish_backward
  // completed it. The other ranks are waiting on this step's buckets: wait for
  // the ones already started, reduce zeros for the others with "gave up" in
  // the tail, so that every rank's backward raises and none steps. A failure
  // here (a dead peer) leaves the DDP broken.
  void abandon(std::int64_t of_generation) noexcept {
    if (!in_backward || of_generation != generation) return;
    in_backward = false;
    if (no_sync_depth > 0 || !broken.empty()) return;
    try {
      for (std::size_t k = 0; k < buckets.size(); ++k) {
        Bucket& b = buckets[k];
        if (k < next_bucket) {
          b.work.wait();
          continue;
        }
        auto stand_in = torch::zeros_like(b.flat);
        if (k + 1 == buckets.size()) write_tail(stand_in, /*finished=*/false);
        comm.allreduce(span_of<float>(stand_in), ReduceOp::avg);
      }
      next_bucket = buckets.size();
    } catch (const std::exception& e) {
      broken = detail::concat("a collective failed while giving up step ", generation, ": ", e.what());
    } catch (...) {
      broken = detail::concat("giving up step ", generation, " failed");
    }
  }

  struct BackwardGuard {
    std::weak_ptr<State> state;
    std::int64_t generation;
    BackwardGuard(std::weak_ptr<State> s, std::int64_t g) : state(std::move(s)), generation(g) {}
    ~BackwardGuard() {
      if (auto s = state.lock()) s->abandon(generation);
    }
  };

  void finish_backward() {
    if (no_sync_depth > 0) {
      in_backward = false;
      return;
    }
    std::string unused;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (ready[i]) continue;
      if (!options.find_unused_parameters) {
        unused += (unused.empty() ? "" : ", ") + names[i];
        continue;
      }
      adopt_gradient(i);  // no gradient this step counts as its accumulated value (zero after zero_grad)
      ready[i] = true;
      --buckets[bucket_of[i]].pending;
    }
    DAGR_ENFORCE(unused.empty(), Error, "DDP: these parameters got no gradient in this step: ", unused,
                 ". Every rank must reduce every bucket; construct DistributedDataParallel with "
                 "find_unused_parameters = true if parts of the model are skipped on purpose.");
    const auto start = std::chrono::steady_clock::now();
    start_ready_buckets(/*final=*/true);
    for (Bucket& b : buckets) collective([&] { b.work.wait(); });
    stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    in_backward = false;  // the step is complete on every rank
    ++stats.steps;
    check_tail();
  }
};

namespace {
// The module itself when something owns it through a shared_ptr (a module
// holder, make_shared): the DDP then shares that ownership. Otherwise (a
// module on the stack or a member) a pointer that owns nothing: the caller
// keeps the module alive as long as the DDP.
std::shared_ptr<torch::nn::Module> share_or_borrow(torch::nn::Module& module) {
  if (auto owned = module.weak_from_this().lock()) return owned;
  return std::shared_ptr<torch::nn::Module>(std::shared_ptr<torch::nn::Module>(), &module);
}
}  // namespace

DistributedDataParallel::DistributedDataParallel(torch::nn::Module& module, Communicator comm, DdpOptions options)
    : DistributedDataParallel(share_or_borrow(module), std::move(comm), options) {}

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, Communicator comm,
                                                 DdpOptions options)
    : module_(std::move(module)), comm_(comm), state_(std::make_shared<State>(comm)) {
  DAGR_ENFORCE(module_ != nullptr, InputError, "DDP: the module is null");
  State& s = *state_;
  s.options = options;
  torch::NoGradGuard no_grad;
  for (const auto& item : module_->named_parameters()) {
    broadcast_tensor(comm_, item.value(), item.key());
    if (!item.value().requires_grad()) continue;
    DAGR_ENFORCE(item.value().scalar_type() == torch::kFloat32, InputError, "DDP: parameter ", item.key(),
                 " is ", item.value().scalar_type(), "; only float32 parameters are supported");
    s.names.push_back(item.key());
    s.params.push_back(item.value());
  }
  for (const auto& item : module_->named_buffers()) broadcast_tensor(comm_, item.value(), item.key());

  // Buckets, from the last parameter to the first.
  const std::size_t n = s.params.size();
  s.bucket_of.assign(n, 0);
  s.views.resize(n);
  s.ready.assign(n, false);
  std::vector<std::vector<std::size_t>> groups;
  std::size_t bytes = 0;
  for (std::size_t k = n; k-- > 0;) {
    const std::size_t cap = groups.size() <= 1 ? options.first_bucket_bytes : options.bucket_cap_bytes;
    if (groups.empty() || bytes >= cap) {
      groups.emplace_back();
      bytes = 0;
    }
    groups.back().push_back(k);
    bytes += static_cast<std::size_t>(s.params[k].numel()) * sizeof(float);
  }
  for (auto& members : groups) {
    Bucket b;
    std::int64_t total = 0;
    for (std::size_t i : members) total += s.params[i].numel();
    const bool last = s.buckets.size() + 1 == groups.size();
    b.flat = torch::zeros({total + (last ? kTailFloats : 0)}, torch::kFloat32);
    std::int64_t offset = 0;
    for (std::size_t i : members) {
      s.bucket_of[i] = s.buckets.size();
      // Shares the bucket's storage without being an autograd view (which
      // optimizers could not detach_ in zero_grad).
      s.views[i] = torch::empty({0}, torch::kFloat32)
                       .set_(b.flat.storage(), offset, s.params[i].sizes(), s.params[i].contiguous().strides());
      offset += s.params[i].numel();
      s.params[i].mutable_grad() = s.views[i];
    }
    b.members = std::move(members);
    s.buckets.push_back(std::move(b));
  }
  for (std::size_t i = 0; i < n; ++i) {
    // Runs after autograd accumulated the parameter's gradient.
    s.accumulators.push_back(torch_compat::on_gradient_accumulated(
        s.params[i], [state = std::weak_ptr<State>(state_), i] {
          if (auto live = state.lock()) live->on_gradient_ready(i);
        }));
  }
}

DistributedDataParallel::~DistributedDataParallel() { state_->active = false; }

int DistributedDataParallel::bucket_count() const { return static_cast<int>(state_->buckets.size()); }
DdpStats DistributedDataParallel::stats() const { return state_->stats; }

DistributedDataParallel::NoSync::NoSync(DistributedDataParallel& ddp) : ddp_(ddp) { ++ddp_.state_->no_sync_depth; }
DistributedDataParallel::NoSync::~NoSync() { --ddp_.state_->no_sync_depth; }

}  // namespace dagr
