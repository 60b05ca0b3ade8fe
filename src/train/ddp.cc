#include "dagr/train/ddp.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <set>

#include "dagr/error.h"
#include "dagr/torch/compat.h"
#include "dagr/torch/shared_tensor.h"
#include "dagr/torch/tensor.h"
#include "dagr/train/gradient_home.h"
#include "dagr/train/timeline.h"

namespace dagr {
namespace {

void broadcast_tensor(Communicator& comm, const torch::Tensor& t, const std::string& name) {
  visit_span(t, detail::concat("DDP: ", name), [&](auto data) { comm.broadcast(data, 0); });
}

// The last bucket carries kTailFloats more elements after the gradients,
// averaged with them: 1 when this rank finished its backward (0 when it gave it
// up), the step number s mod 64 and its square — equal averages on every rank
// mean every rank reduced the same step — and 1 when this rank trained in this
// step (0 when it shadows the step from join()). Small integers: exact in
// float32 and float64, not in the 16-bit formats, so a model whose last bucket
// is 16-bit gets a float32 bucket of its own for them.
constexpr std::int64_t kTailFloats = 4;
constexpr std::int64_t kStepModulus = 64;

struct Bucket {
  torch::Tensor flat;                // one dtype, every member's gradient side by side (+ the tail in the last)
  std::vector<std::size_t> members;  // parameter indices
  std::vector<std::vector<std::int64_t>> shapes;  // the members' shapes
  int pending = 0;                   // members not yet ready this step
  HookWork work;                     // the hook's averaging of this step
  Work tail_work;                    // the tail's own allreduce (a hook other than the plain average)
  torch::Tensor stand_in;            // zeros reduced instead of `flat` (abandon, shadow_step), kept until waited
};

// Buffers of one dtype, sent by rank 0 in one broadcast through `flat`.
struct BufferGroup {
  torch::Tensor flat;
  std::vector<torch::Tensor> members;
};

// Calls f(pointer to the tail's first element) of the last bucket (float32 or float64).
template <class F>
void with_tail(const torch::Tensor& flat, F&& f) {
  if (flat.scalar_type() == torch::kFloat64) f(flat.data_ptr<double>() + flat.numel() - kTailFloats);
  else f(flat.data_ptr<float>() + flat.numel() - kTailFloats);
}

bool is_float_type(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kFloat16 || t == torch::kBFloat16;
}

// PyTorch's bucket assignment (compute_bucket_assignment_by_size): the
// parameters are taken in `order`; each dtype has one open bucket, which closes
// once it holds at least its cap (first_bucket_bytes for a dtype's first
// bucket, bucket_cap_bytes after). The buckets are sorted by the position in
// `order` of their first member, so the bucket that fills first starts first.
std::vector<std::vector<std::size_t>> assign_buckets(const std::vector<std::size_t>& order,
                                                     const std::vector<torch::Tensor>& params,
                                                     const DdpOptions& options) {
  struct Open {
    std::vector<std::size_t> members;
    std::size_t bytes = 0;
    int closed = 0;  // buckets of this dtype closed so far
  };
  std::map<torch::ScalarType, Open> open;
  std::vector<std::pair<std::size_t, std::vector<std::size_t>>> done;  // (first position, members)
  std::map<std::size_t, std::size_t> position;
  for (std::size_t k = 0; k < order.size(); ++k) position[order[k]] = k;
  auto close = [&](Open& o) {
    done.emplace_back(position[o.members.front()], std::move(o.members));
    o.members.clear();
    o.bytes = 0;
    ++o.closed;
  };
  for (std::size_t i : order) {
    Open& o = open[params[i].scalar_type()];
    const std::size_t cap = o.closed == 0 ? options.first_bucket_bytes : options.bucket_cap_bytes;
    if (!o.members.empty() && o.bytes >= cap) close(o);
    o.members.push_back(i);
    o.bytes += static_cast<std::size_t>(params[i].numel()) * params[i].element_size();
  }
  for (auto& [type, o] : open)
    if (!o.members.empty()) close(o);
  std::sort(done.begin(), done.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::vector<std::size_t>> groups;
  for (auto& d : done) groups.push_back(std::move(d.second));
  return groups;
}

}  // namespace

struct DistributedDataParallel::State : std::enable_shared_from_this<DistributedDataParallel::State> {
  Communicator comm;
  DdpOptions options;
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> views;        // params[i]'s slice of its bucket
  std::vector<std::size_t> bucket_of;
  std::vector<Bucket> buckets;
  std::vector<BufferGroup> buffer_groups;  // empty unless broadcast_buffers
  std::vector<bool> ready;                 // this step
  std::vector<std::size_t> ready_order;    // this step's parameters in the order their gradients came
  std::size_t outstanding = 0;             // parameters whose gradient has not come yet this step
  bool rebuilt = false;                    // buckets already rebuilt in the order gradients come
  std::vector<std::shared_ptr<void>> accumulators;  // kept alive: the hooks live on them
  std::size_t next_bucket = 0;             // buckets start strictly in this order
  bool in_backward = false;
  int no_sync_depth = 0;
  bool active = true;
  std::int64_t generation = 0;             // backward passes begun; the same count on every rank
  std::string broken;                      // set when a collective failed: every later backward raises
  DdpStats stats;
  std::shared_ptr<CommHook> hook = allreduce_hook();
  timeline::DdpTrace trace;                // what DDP records while a timeline is recording
  bool hook_registered = false;            // register_comm_hook or the secure_aggregation option
  std::size_t last_hooked = 0;             // the last bucket with members: the hook's `last` bucket

  explicit State(Communicator c) : comm(std::move(c)) {}

  // Makes the flat buckets for `groups` (see assign_buckets) and points every
  // parameter's gradient at its slice, carrying over the gradient it holds.
  // The buckets live in memory the group shares (shared_zeros), so that the
  // in-place allreduce of each takes no staging copies on shared memory.
  void make_buckets(const std::vector<std::vector<std::size_t>>& groups) {
    std::vector<Bucket> made;
    for (const auto& members : groups) {
      const torch::ScalarType type = params[members.front()].scalar_type();
      const bool last = made.size() + 1 == groups.size();
      const bool tail_here = last && (type == torch::kFloat32 || type == torch::kFloat64);
      std::int64_t total = 0;
      for (std::size_t i : members) total += params[i].numel();
      Bucket b;
      b.flat = shared_zeros(comm, total + (tail_here ? kTailFloats : 0), type);
      b.members = members;
      for (std::size_t i : members) b.shapes.push_back(params[i].sizes().vec());
      made.push_back(std::move(b));
    }
    if (made.empty() ||
        (made.back().flat.scalar_type() != torch::kFloat32 && made.back().flat.scalar_type() != torch::kFloat64)) {
      Bucket tail;  // no members: only the tail, after the last bucket of gradients
      tail.flat = shared_zeros(comm, kTailFloats, torch::kFloat32);
      made.push_back(std::move(tail));
    }
    for (std::size_t k = 0; k < made.size(); ++k) {
      std::int64_t offset = 0;
      for (std::size_t i : made[k].members) {
        bucket_of[i] = k;
        torch::Tensor view = gradient_over(made[k].flat, offset, params[i].sizes());
        offset += params[i].numel();
        torch::Tensor& grad = params[i].mutable_grad();
        if (grad.defined()) view.copy_(grad);
        grad = view;
        views[i] = view;
        if (comm.size() > 1) set_gradient_home(params[i], view);  // a layer may write the gradient there itself
      }
    }
    buckets = std::move(made);
    for (std::size_t k = 0; k < buckets.size(); ++k)
      if (!buckets[k].members.empty()) last_hooked = k;
  }

  // The gradient must live in the bucket. It does unless the optimizer reset it
  // (set_to_none) and autograd made a fresh tensor: then move it in. A layer
  // that wrote it into its home (gradient_home.h) left it there already.
  void adopt_gradient(std::size_t i) {
    torch::Tensor& grad = params[i].mutable_grad();
    if (grad.defined() && grad.data_ptr() == views[i].data_ptr()) return;
    if (grad.defined()) {
      views[i].copy_(grad);
      ++stats.gradients_copied;
    } else {
      views[i].zero_();
    }
    grad = views[i];
  }

  void release_gradient_homes() {
    for (const torch::Tensor& p : params) release_gradient_home(p);
  }

  void on_gradient_ready(std::size_t i) {
    if (!active || comm.size() == 1) return;  // a group of one has nothing to average
    release_gradient_home(params[i]);  // its gradient is in: the next backward may write the home again
    if (!in_backward) {
      DAGR_ENFORCE(broken.empty(), Error, "DDP: cannot reduce gradients any more: ", broken);
      in_backward = true;
      std::fill(ready.begin(), ready.end(), false);
      ready_order.clear();
      outstanding = params.size();
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
    mark_ready(i);
    if (no_sync_depth > 0) return;
    start_ready_buckets(/*final=*/false);
  }

  void mark_ready(std::size_t i) {
    ready[i] = true;
    ready_order.push_back(i);
    --outstanding;
    --buckets[bucket_of[i]].pending;
  }

  // Starts averaging bucket k, whose values are in `flat` (the bucket's own,
  // or a stand-in of zeros), through the hook. The last bucket's tail (step
  // numbers and flags: nothing private, and not for a lossy hook to round)
  // rides with a hook that carries it (carries_check()), else goes in a
  // float32 allreduce of its own; a bucket of only the tail needs no hook.
  // Every path (a step, a given up step, a shadowed step) starts every bucket
  // in order and only then waits for them in order (wait_bucket), so the
  // ranks issue the hooks' collectives in one order whichever path each is on.
  void start_bucket(std::size_t k, const torch::Tensor& flat) {
    Bucket& b = buckets[k];
    const std::int64_t tail = k + 1 == buckets.size() ? kTailFloats : 0;
    b.tail_work = Work();
    if (b.members.empty()) {
      b.work = HookWork(visit_span(flat, "DDP step check", [&](auto data) { return comm.allreduce_async(data, ReduceOp::avg); }));
      return;
    }
    const bool whole = tail == 0 || hook->carries_check();
    GradBucket g{.index = k, .last = k == last_hooked, .buffer = whole ? flat : flat.narrow(0, 0, flat.numel() - tail),
                 .parameters = b.members, .shapes = b.shapes, .check = whole ? tail : 0};
    b.work = hook->run(comm, g);
    if (!whole)
      b.tail_work = visit_span(flat.narrow(0, flat.numel() - tail, tail), "DDP step check",
                               [&](auto data) { return comm.allreduce_async(data, ReduceOp::avg); });
  }

  void wait_bucket(Bucket& b) {
    b.work.wait();
    b.tail_work.wait();
    b.stand_in = torch::Tensor();
  }

  // Starts, in order, every bucket whose gradients are all in. A bucket counts
  // as overlapped when it starts while some parameter's gradient is still to
  // come (backward has work left to hide it behind); the last one never does.
  // The last bucket carries the step's "finished" flag, so it starts only at
  // the end of backward (`final`, from finish_backward): the rest of backward
  // (an input's gradient, a user's hook) may still raise, and abandon() then
  // sends "gave up" in it instead. DDP waits for it at once either way.
  void start_ready_buckets(bool final) {
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0) {
      if (next_bucket + 1 == buckets.size() && !final) return;
      const std::size_t k = next_bucket++;
      Bucket& b = buckets[k];
      if (next_bucket == buckets.size()) write_tail(b.flat, /*finished=*/true);
      const auto since = timeline::enabled() ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
      collective([&] { start_bucket(k, b.flat); });
      if (timeline::enabled()) trace.started(generation, static_cast<int>(k), b.flat.nbytes(), hook->name(), since, b.work.collective(),
                                              b.work.deferred());
      if (next_bucket < buckets.size() && !final && outstanding > 0) ++stats.buckets_overlapped;
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

  void write_tail(torch::Tensor& flat, bool finished, bool trained = true) {
    const double s = static_cast<double>(generation % kStepModulus);
    with_tail(flat, [&](auto* tail) {
      using T = std::remove_pointer_t<decltype(tail)>;
      tail[0] = finished ? T(1) : T(0);
      tail[1] = static_cast<T>(s);
      tail[2] = static_cast<T>(s * s);
      tail[3] = trained ? T(1) : T(0);
    });
  }

  struct Tail {
    bool all_finished;  // no rank gave this step up
    bool any_trained;   // some rank trained in this step (not all shadowed it from join())
  };

  // After the last bucket: was it the same step everywhere (else every rank
  // raises, now and later)? The tail holds the averages (see kTailFloats).
  Tail read_tail(const torch::Tensor& flat) {
    double tail[kTailFloats];
    with_tail(flat, [&](auto* t) { std::copy(t, t + kTailFloats, tail); });
    const double slack = 0.5 / comm.size(), s = static_cast<double>(generation % kStepModulus);
    if (std::abs(tail[1] - s) > slack || std::abs(tail[2] - s * s) > slack) {
      broken = detail::concat("the ranks are at different steps (this rank's backward pass ", generation,
                              " met another pass of some rank, e.g. one ran more backward passes under no_sync)");
      throw Error(detail::concat("DDP: ", broken));
    }
    return {tail[0] > 1.0 - slack, tail[3] > slack};
  }

  // The same, on a training rank: did every rank finish this backward?
  void check_tail() {
    DAGR_ENFORCE(read_tail(buckets.back().flat).all_finished, Error, "DDP: another rank failed during step ", generation,
                 "'s backward; the gradients were not averaged, so no rank may take this optimizer step (every "
                 "rank's backward raises, and the next step goes on as usual)");
  }

  // The backward of this step ended by an exception before finish_backward
  // completed it. The other ranks are waiting on this step's buckets: start
  // zeros for the buckets not started yet, with "gave up" in the tail, then
  // wait for every bucket, so that every rank's backward raises and none
  // steps. A failure here (a dead peer) leaves the DDP broken.
  void abandon(std::int64_t of_generation) noexcept {
    if (!in_backward || of_generation != generation) return;
    in_backward = false;
    release_gradient_homes();  // a layer may have claimed one for a gradient autograd never accumulated
    if (no_sync_depth > 0 || !broken.empty()) return;
    try {
      for (std::size_t k = next_bucket; k < buckets.size(); ++k) {
        Bucket& b = buckets[k];
        b.stand_in = torch::zeros_like(b.flat);
        if (k + 1 == buckets.size()) write_tail(b.stand_in, /*finished=*/false);
        start_bucket(k, b.stand_in);
      }
      next_bucket = buckets.size();
      for (Bucket& b : buckets) wait_bucket(b);
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

  // Rank 0's buffers to every rank, one broadcast per dtype.
  void broadcast_buffers() {
    const bool root = comm.rank() == 0;
    for (BufferGroup& g : buffer_groups) {
      std::int64_t offset = 0;
      if (root)
        for (const torch::Tensor& t : g.members) {
          g.flat.narrow(0, offset, t.numel()).copy_(t.reshape({-1}));
          offset += t.numel();
        }
      collective([&] { broadcast_tensor(comm, g.flat, "buffers"); });
      if (root) continue;
      offset = 0;
      for (const torch::Tensor& t : g.members) {
        t.copy_(g.flat.narrow(0, offset, t.numel()).view(t.sizes()));
        offset += t.numel();
      }
    }
  }

  // PyTorch's rebuild_buckets: once, after the first complete step, the
  // buckets are made again with the parameters taken in the order their
  // gradients came in that step (rank 0's order, broadcast, since every rank
  // must hold the same buckets), so a bucket fills, and starts, as early as
  // backward allows even when that order is not the reverse of registration.
  void rebuild_buckets() {
    rebuilt = true;
    // Rank 0's order, or (rank 0 trained no step: it called join() at once) the buckets' own.
    std::vector<std::int64_t> order;
    if (ready_order.size() == params.size()) order.assign(ready_order.begin(), ready_order.end());
    else
      for (const Bucket& b : buckets) order.insert(order.end(), b.members.begin(), b.members.end());
    collective([&] { comm.broadcast(std::span<std::int64_t>(order), 0); });
    const std::vector<std::size_t> by_readiness(order.begin(), order.end());
    auto groups = assign_buckets(by_readiness, params, options);
    bool same = groups.size() <= buckets.size();
    for (std::size_t k = 0; same && k < groups.size(); ++k) same = groups[k] == buckets[k].members;
    if (!same) make_buckets(groups);
  }

  // One step of join(): this rank's share of the step the others take, as
  // abandon() does but with "finished" and "did not train" in the tail, then
  // what a training rank does after a complete step (buffers, the rebuild).
  // Returns whether some rank trained in it.
  bool shadow_step() {
    ++generation;
    for (std::size_t k = 0; k < buckets.size(); ++k) {
      Bucket& b = buckets[k];
      b.stand_in = torch::zeros_like(b.flat);
      if (k + 1 == buckets.size()) write_tail(b.stand_in, /*finished=*/true, /*trained=*/false);
      collective([&] { start_bucket(k, b.stand_in); });
    }
    const torch::Tensor last = buckets.back().stand_in;
    for (Bucket& b : buckets) collective([&] { wait_bucket(b); });
    const Tail tail = read_tail(last);
    if (!tail.all_finished) return true;  // a training rank gave the step up: so do the others, nothing follows
    broadcast_buffers();
    if (!rebuilt && options.rebuild_buckets) rebuild_buckets();
    return tail.any_trained;
  }

  // PyTorch's Join for DDP: shadow the others' steps until a step in which no
  // rank trained (every rank is in join()), then every rank takes the
  // parameters and buffers of a rank that trained the most steps (the lowest
  // rank among those that shadowed no step in which another trained).
  void join(torch::nn::Module& module) {
    DAGR_ENFORCE(!in_backward && no_sync_depth == 0, InputError,
                 "DDP: join() inside a backward pass or a no_sync() scope");
    if (comm.size() == 1) return;
    DAGR_ENFORCE(broken.empty(), Error, "DDP: cannot join any more: ", broken);
    std::int64_t behind = 0;  // steps others trained after this rank's last
    while (shadow_step()) ++behind;
    std::int64_t key = behind * comm.size() + comm.rank();
    collective([&] { comm.allreduce(std::span<std::int64_t>(&key, 1), ReduceOp::min); });
    const int root = static_cast<int>(key % comm.size());
    torch::NoGradGuard no_grad;
    for (const auto& item : module.named_parameters())
      collective([&] { visit_span(item.value(), item.key(), [&](auto data) { comm.broadcast(data, root); }); });
    for (const auto& item : module.named_buffers())
      collective([&] { visit_span(item.value(), item.key(), [&](auto data) { comm.broadcast(data, root); }); });
  }

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
      mark_ready(i);
    }
    DAGR_ENFORCE(unused.empty(), Error, "DDP: these parameters got no gradient in this step: ", unused,
                 ". Every rank must reduce every bucket; construct DistributedDataParallel with "
                 "find_unused_parameters = true if parts of the model are skipped on purpose.");
    const auto start = std::chrono::steady_clock::now();
    start_ready_buckets(/*final=*/true);
    for (Bucket& b : buckets) collective([&] { wait_bucket(b); });
    stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeline::enabled()) trace.end_step(generation, start);
    in_backward = false;  // the step is complete on every rank
    ++stats.steps;
    check_tail();
    broadcast_buffers();
    if (!rebuilt && options.rebuild_buckets) rebuild_buckets();
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
  // A tensor registered under several names (tied weights) is one parameter
  // here, under its first name, as in PyTorch's DDP: one gradient, one slice.
  std::set<const c10::TensorImpl*> seen;
  for (const auto& item : module_->named_parameters()) {
    broadcast_tensor(comm_, item.value(), item.key());
    if (!item.value().requires_grad() || !seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    DAGR_ENFORCE(is_float_type(item.value().scalar_type()), InputError, "DDP: parameter ", item.key(), " is ",
                 item.value().scalar_type(), "; DDP averages float32, float64, float16 and bfloat16 parameters");
    DAGR_ENFORCE(!options.secure_aggregation || item.value().scalar_type() == torch::kFloat32, InputError,
                 "DDP: secure aggregation sums float32 gradients; parameter ", item.key(), " is ",
                 item.value().scalar_type());
    s.names.push_back(item.key());
    s.params.push_back(item.value());
  }
  if (options.secure_aggregation && comm_.size() > 1) s.hook = secure_aggregation_hook(comm_, *options.secure_aggregation);
  s.hook_registered = options.secure_aggregation.has_value();
  if (timeline::enabled()) s.trace.join(comm_);  // collective: the group's pids name it in the timeline
  std::map<torch::ScalarType, BufferGroup> buffers;
  for (const auto& item : module_->named_buffers()) {
    broadcast_tensor(comm_, item.value(), item.key());
    if (options.broadcast_buffers && comm_.size() > 1) buffers[item.value().scalar_type()].members.push_back(item.value());
  }
  for (auto& [type, group] : buffers) {
    std::int64_t total = 0;
    for (const auto& t : group.members) total += t.numel();
    group.flat = torch::empty({total}, torch::TensorOptions().dtype(type));
    s.buffer_groups.push_back(std::move(group));
  }

  // Buckets, from the last parameter to the first (rebuilt after the first
  // step in the order the gradients came).
  const std::size_t n = s.params.size();
  s.bucket_of.assign(n, 0);
  s.views.resize(n);
  s.ready.assign(n, false);
  std::vector<std::size_t> reverse(n);
  for (std::size_t k = 0; k < n; ++k) reverse[k] = n - 1 - k;
  s.make_buckets(assign_buckets(reverse, s.params, options));
  for (std::size_t i = 0; i < n; ++i) {
    // Runs after autograd accumulated the parameter's gradient.
    s.accumulators.push_back(torch_compat::on_gradient_accumulated(
        s.params[i], [state = std::weak_ptr<State>(state_), i] {
          if (auto live = state.lock()) live->on_gradient_ready(i);
        }));
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  state_->active = false;
  for (std::size_t i = 0; i < state_->params.size(); ++i) clear_gradient_home(state_->params[i], state_->views[i]);
}

void DistributedDataParallel::join() { state_->join(*module_); }

int DistributedDataParallel::bucket_count() const { return static_cast<int>(state_->buckets.size()); }

void DistributedDataParallel::register_comm_hook(std::shared_ptr<CommHook> hook) {
  State& s = *state_;
  DAGR_ENFORCE(hook != nullptr, InputError, "DDP: register_comm_hook: the hook is null");
  DAGR_ENFORCE(!s.options.secure_aggregation, InputError,
               "DDP: register_comm_hook: secure_aggregation already averages through its own hook");
  DAGR_ENFORCE(!s.hook_registered, InputError, "DDP: register_comm_hook may be called once");
  DAGR_ENFORCE(!s.in_backward, InputError, "DDP: register_comm_hook inside a backward pass");
  s.hook = std::move(hook);
  s.hook_registered = true;
}

const CommHook& DistributedDataParallel::comm_hook() const { return *state_->hook; }
DdpStats DistributedDataParallel::stats() const { return state_->stats; }

std::vector<DistributedDataParallel::BucketLayout> DistributedDataParallel::bucket_layout() const {
  std::vector<BucketLayout> layout;
  for (const Bucket& b : state_->buckets) {
    if (b.members.empty()) continue;  // the step-check values' own bucket
    BucketLayout l;
    std::int64_t n = 0;
    for (std::size_t i : b.members) {
      l.parameters.push_back(state_->params[i]);
      n += state_->params[i].numel();
    }
    l.gradients = b.flat.narrow(0, 0, n);
    layout.push_back(std::move(l));
  }
  return layout;
}

DistributedDataParallel::NoSync::NoSync(DistributedDataParallel& ddp) : ddp_(ddp) { ++ddp_.state_->no_sync_depth; }
DistributedDataParallel::NoSync::~NoSync() { --ddp_.state_->no_sync_depth; }

}  // namespace dagr
