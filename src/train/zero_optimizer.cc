#include "dagr/train/zero_optimizer.h"

#include <optional>
#include <string_view>
#include <unordered_map>

#include "dagr/error.h"
#include "dagr/train/checkpoint.h"
#include "dagr/train/comm_hook.h"
#include "dagr/torch/compat.h"
#include "dagr/torch/tensor.h"

namespace dagr {
namespace {

// SGD's and Adam's per-element state, by the names checkpoints give it.
constexpr const char* kKinds[] = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

torch::Tensor state_tensor(const torch::optim::OptimizerParamState& s, std::string_view kind) {
  if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(&s))
    return kind == "momentum_buffer" ? sgd->momentum_buffer() : torch::Tensor();
  if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(&s)) {
    if (kind == "exp_avg") return adam->exp_avg();
    if (kind == "exp_avg_sq") return adam->exp_avg_sq();
    if (kind == "max_exp_avg_sq") return adam->max_exp_avg_sq();
  }
  return {};
}

std::size_t element_state_bytes(const torch::optim::Optimizer& optimizer) {
  std::size_t bytes = 0;
  for (const auto& [key, s] : optimizer.state())
    for (const char* kind : kKinds)
      if (const torch::Tensor t = state_tensor(*s, kind); t.defined())
        bytes += static_cast<std::size_t>(t.numel()) * t.element_size();
  return bytes;
}

// One DDP bucket as ZeRO holds it.
struct Shard {
  torch::Tensor gradients;             // DDP's bucket: the members' gradients side by side
  std::vector<torch::Tensor> members;  // the parameters, views of `params` (the same order)
  torch::Tensor params;                // the members' values side by side
  std::int64_t block = 0;              // f = ⌊n/N⌋: rank r owns [r·f, (r+1)·f)
  std::int64_t rest = 0;               // n − N·f elements at the end, owned by every rank
  torch::Tensor own, common;           // views of params: this rank's block (block > 0), the rest (rest > 0)
};

}  // namespace

struct ZeroOptimizer::Impl {
  DistributedDataParallel& ddp;
  Communicator comm;
  MakeOptimizer make;
  ZeroOptions options;
  std::vector<Shard> shards;
  std::unique_ptr<torch::optim::Optimizer> inner;  // steps this rank's slices
  std::int64_t steps = 0;

  Impl(DistributedDataParallel& d, MakeOptimizer m, ZeroOptions o)
      : ddp(d), comm(d.communicator()), make(std::move(m)), options(o) {}

  int rank() const { return comm.rank(); }
  std::int64_t world() const { return comm.size(); }

  bool same_layout(const std::vector<DistributedDataParallel::BucketLayout>& layout) const {
    if (layout.size() != shards.size()) return false;
    for (std::size_t k = 0; k < layout.size(); ++k) {
      const Shard& s = shards[k];
      if (layout[k].gradients.data_ptr() != s.gradients.data_ptr() ||
          layout[k].gradients.numel() != s.gradients.numel() || layout[k].parameters.size() != s.members.size())
        return false;
      for (std::size_t i = 0; i < s.members.size(); ++i)
        if (!layout[k].parameters[i].is_same(s.members[i])) return false;
    }
    return true;
  }

  // The slices the wrapped optimizer steps, in shard order.
  std::vector<torch::Tensor> slices() const {
    std::vector<torch::Tensor> out;
    for (const Shard& s : shards) {
      if (s.own.defined()) out.push_back(s.own);
      if (s.common.defined()) out.push_back(s.common);
    }
    return out;
  }

  // Shards for DDP's buckets as they are now: the parameters move into flat
  // buffers laid out as the buckets, and a wrapped optimizer is made for this
  // rank's slices.
  void lay_out(std::vector<DistributedDataParallel::BucketLayout> layout) {
    torch::NoGradGuard no_grad;
    shards.clear();
    const std::int64_t n_ranks = world();
    for (auto& bucket : layout) {
      Shard s;
      s.gradients = bucket.gradients;
      s.members = std::move(bucket.parameters);
      const std::int64_t n = s.gradients.numel();
      s.block = n / n_ranks;
      s.rest = n - n_ranks * s.block;
      s.params = torch::empty({n}, s.gradients.options());
      std::int64_t offset = 0;
      for (torch::Tensor& p : s.members) {
        torch::Tensor view = s.params.narrow(0, offset, p.numel());
        view.copy_(p.detach().reshape({-1}));
        p.set_data(view.view(p.sizes()));
        offset += p.numel();
      }
      if (s.block > 0) {
        s.own = s.params.narrow(0, rank() * s.block, s.block);
        s.own.mutable_grad() = s.gradients.narrow(0, rank() * s.block, s.block);
      }
      if (s.rest > 0) {
        s.common = s.params.narrow(0, n_ranks * s.block, s.rest);
        s.common.mutable_grad() = s.gradients.narrow(0, n_ranks * s.block, s.rest);
      }
      shards.push_back(std::move(s));
    }
    inner = make(slices());
    DAGR_ENFORCE(inner != nullptr, InputError, "ZeRO: the optimizer factory returned no optimizer");
  }

  // The wrapped optimizer's state of `kind` for every element of shard s, in
  // bucket layout (collective: the blocks are allgathered); undefined when it
  // keeps no such state.
  torch::Tensor gather(const Shard& s, std::string_view kind) {
    auto of = [&](const torch::Tensor& slice) -> torch::Tensor {
      const auto it = inner->state().find(torch_compat::optimizer_state_key(slice));
      return it == inner->state().end() ? torch::Tensor() : state_tensor(*it->second, kind);
    };
    const torch::Tensor probe = of(s.own.defined() ? s.own : s.common);
    if (!probe.defined()) return {};
    torch::Tensor flat = torch::empty({s.params.numel()}, probe.options());
    if (s.block > 0) {
      flat.narrow(0, rank() * s.block, s.block).copy_(of(s.own));
      torch::Tensor blocks = flat.narrow(0, 0, world() * s.block);
      if (world() > 1) visit_span(blocks, "ZeRO state", [&](auto data) { comm.allgather(data); });
    }
    if (s.rest > 0) flat.narrow(0, world() * s.block, s.rest).copy_(of(s.common));
    return flat;
  }

  // Elements of `state` named name + "/" + kind for every member of s, in
  // bucket layout; undefined when some member has none.
  static torch::Tensor scatter_source(const Shard& s, const std::vector<std::string>& names,
                                      const std::map<std::string, torch::Tensor>& state, const std::string& kind) {
    torch::Tensor flat = torch::empty({s.params.numel()}, s.params.options());
    std::int64_t offset = 0;
    for (std::size_t i = 0; i < s.members.size(); ++i) {
      const auto it = state.find(names[i] + "/" + kind);
      if (it == state.end()) return {};
      DAGR_ENFORCE(it->second.numel() == s.members[i].numel(), InputError, "the optimizer state ", names[i], "/",
                   kind, " has ", it->second.numel(), " elements, the parameter ", s.members[i].numel());
      flat.narrow(0, offset, s.members[i].numel()).copy_(it->second.reshape({-1}));
      offset += s.members[i].numel();
    }
    return flat;
  }

  // Each member of every shard by its name in `named`.
  std::vector<std::vector<std::string>> names_of(const torch::OrderedDict<std::string, torch::Tensor>& named) const {
    std::unordered_map<const void*, std::string> by_impl;
    for (const auto& item : named) by_impl[item.value().unsafeGetTensorImpl()] = item.key();
    std::vector<std::vector<std::string>> names;
    for (const Shard& s : shards) {
      names.emplace_back();
      for (const torch::Tensor& p : s.members) {
        const auto it = by_impl.find(p.unsafeGetTensorImpl());
        DAGR_ENFORCE(it != by_impl.end(), InputError, "ZeRO: a parameter of shape ", p.sizes(),
                     " has no name in the names given");
        names.back().push_back(it->second);
      }
    }
    return names;
  }

  std::map<std::string, torch::Tensor> dense(const torch::OrderedDict<std::string, torch::Tensor>& named, double lr) {
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> out;
    out["group0/lr"] = torch::tensor(lr, torch::kFloat64);
    const auto names = names_of(named);
    // Every rank stepped the same steps, so every rank has state or none has.
    if (inner->state().empty()) return out;
    for (const char* kind : kKinds)
      for (std::size_t k = 0; k < shards.size(); ++k) {
        const torch::Tensor flat = gather(shards[k], kind);
        if (!flat.defined()) continue;
        std::int64_t offset = 0;
        for (std::size_t i = 0; i < shards[k].members.size(); ++i) {
          const torch::Tensor& p = shards[k].members[i];
          out[names[k][i] + "/" + kind] = flat.narrow(0, offset, p.numel()).view(p.sizes()).clone();
          offset += p.numel();
        }
      }
    if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(inner->state().begin()->second.get()))
      for (const auto& item : named) out[item.key() + "/step"] = torch::tensor(adam->step(), torch::kInt64);
    return out;
  }

  void load(const torch::OrderedDict<std::string, torch::Tensor>& named, const std::map<std::string, torch::Tensor>& state) {
    torch::NoGradGuard no_grad;
    const bool sgd = dynamic_cast<torch::optim::SGD*>(inner.get()) != nullptr;
    const bool adam = dynamic_cast<torch::optim::Adam*>(inner.get()) != nullptr;
    DAGR_ENFORCE(sgd || adam, InputError, "ZeRO: dense optimizer state is SGD's or Adam's only");
    check_optimizer_state_kind(state, sgd ? "SGD" : "Adam");
    const auto names = names_of(named);
    std::optional<std::int64_t> step;
    if (adam && !names.empty() && !names.front().empty())
      if (const auto it = state.find(names.front().front() + "/step"); it != state.end()) step = it->second.item<std::int64_t>();
    auto& inner_state = inner->state();
    inner_state.clear();
    for (std::size_t k = 0; k < shards.size(); ++k) {
      const Shard& s = shards[k];
      std::map<std::string, torch::Tensor> flats;
      for (const char* kind : kKinds) flats[kind] = scatter_source(s, names[k], state, kind);
      const std::pair<torch::Tensor, std::int64_t> slices[] = {{s.own, rank() * s.block}, {s.common, world() * s.block}};
      for (const auto& [slice, offset] : slices) {
        if (!slice.defined()) continue;
        auto part = [&](const torch::Tensor& flat) {
          return flat.defined() ? flat.narrow(0, offset, slice.numel()).clone() : torch::Tensor();
        };
        if (sgd) {
          torch::Tensor buffer = part(flats["momentum_buffer"]);
          if (!buffer.defined()) continue;
          auto st = std::make_unique<torch::optim::SGDParamState>();
          st->momentum_buffer(buffer);
          inner_state[torch_compat::optimizer_state_key(slice)] = std::move(st);
        } else {
          if (!step) continue;
          auto st = std::make_unique<torch::optim::AdamParamState>();
          st->step(*step);
          st->exp_avg(part(flats["exp_avg"]));
          st->exp_avg_sq(part(flats["exp_avg_sq"]));
          st->max_exp_avg_sq(part(flats["max_exp_avg_sq"]));
          DAGR_ENFORCE(st->exp_avg().defined() && st->exp_avg_sq().defined(), InputError,
                       "the optimizer state's Adam moments are incomplete");
          inner_state[torch_compat::optimizer_state_key(slice)] = std::move(st);
        }
      }
    }
  }

  // Names for the parameters of the current shards, to carry the state over a new layout.
  torch::OrderedDict<std::string, torch::Tensor> own_names() const {
    torch::OrderedDict<std::string, torch::Tensor> named;
    for (const Shard& s : shards)
      for (const torch::Tensor& p : s.members) named.insert(std::to_string(named.size()), p);
    return named;
  }

  // DDP rebuilt its buckets: new shards, and the state carried over through its dense form.
  void relay_out(std::vector<DistributedDataParallel::BucketLayout> layout, double lr) {
    DAGR_ENFORCE(options.stage == 1 || steps == 0, Error, "ZeRO-2: DDP's buckets changed after step ", steps,
                 ": the gradients were reduce-scattered in the old layout");
    std::optional<std::map<std::string, torch::Tensor>> kept;
    const auto named = own_names();
    if (!inner->state().empty()) kept = dense(named, lr);
    lay_out(std::move(layout));
    if (kept) load(named, *kept);
  }
};

namespace {

// ZeRO-2's comm hook: each bucket of n elements reduce-scattered in N blocks
// of ⌊n/N⌋ (rank r gets the average of block r, the blocks of the others are
// left as they were) and its rest allreduced, both started at once; the
// ZeroOptimizer's shards are cut the same way. DDP's check values, which
// follow the last bucket's gradients, ride in the rest's allreduce (averaged
// as DDP's own allreduce of them would): one collective fewer per step. While the optimizer has taken
// no step the buckets may still be rebuilt (carrying their gradients into
// another layout), so the first step is averaged whole.
class ZeroHook : public CommHook {
 public:
  explicit ZeroHook(std::weak_ptr<const ZeroOptimizer::Impl> zero) : zero_(std::move(zero)) {}
  std::string name() const override { return "zero2"; }
  bool carries_check() const override { return true; }
  HookWork run(Communicator& comm, GradBucket& bucket) override;

 private:
  std::weak_ptr<const ZeroOptimizer::Impl> zero_;
};

}  // namespace

HookWork ZeroHook::run(Communicator& comm, GradBucket& bucket) {
  const torch::Tensor buffer = bucket.buffer;
  const auto zero = zero_.lock();
  const bool whole = !zero || zero->steps == 0 || comm.size() == 1;
  const std::int64_t world = comm.size(), block = (buffer.numel() - bucket.check) / world;
  // The bucket's collectives, asynchronous or (`now`) blocking: the whole
  // bucket averaged, or its blocks scattered and the rest averaged.
  auto start = [whole, world, block, buffer](Communicator& comm, bool now, Work& scatter, Work& common) {
    auto average = [&](const torch::Tensor& t) {
      return visit_span(t, "ZeRO bucket", [&](auto data) {
        if (!now) return comm.allreduce_async(data, ReduceOp::avg);
        comm.allreduce(data, ReduceOp::avg);
        return Work();
      });
    };
    if (whole) {
      common = average(buffer);
      return;
    }
    if (block > 0)
      scatter = visit_span(buffer.narrow(0, 0, world * block), "ZeRO bucket", [&](auto data) {
        using T = typename decltype(data)::element_type;
        const auto in = std::span<const T>(data);
        const auto out = data.subspan(comm.rank() * block, block);
        if (!now) return comm.reduce_scatter_async(in, out, ReduceOp::avg);
        comm.reduce_scatter(in, out, ReduceOp::avg);
        return Work();
      });
    const std::int64_t tail = buffer.numel() - world * block;  // the rest and DDP's check
    if (tail > 0) common = average(buffer.narrow(0, world * block, tail));
  };
  if (bucket.last)  // waited for at once: started on the waiting thread (HookWork::when_waited)
    return HookWork::when_waited([start, comm]() mutable {
      Work scatter, common;
      start(comm, /*now=*/true, scatter, common);
      return HookWork();
    });
  Work scatter, common;
  start(comm, /*now=*/false, scatter, common);
  // Collectives complete in issue order: once the rest is in, so is the scatter (wait() for its error).
  return HookWork(std::move(common), [scatter]() mutable {
    scatter.wait();
    return HookWork();
  });
}

ZeroOptimizer::ZeroOptimizer(DistributedDataParallel& ddp, MakeOptimizer make, ZeroOptions options)
    : ZeroOptimizer([&] {
        DAGR_ENFORCE(options.stage == 1 || options.stage == 2, InputError, "ZeRO: stage ", options.stage,
                     " (1: optimizer state sharded, 2: gradients too)");
        DAGR_ENFORCE(make != nullptr, InputError, "ZeRO: no optimizer factory");
        auto impl = std::make_shared<Impl>(ddp, std::move(make), options);
        impl->lay_out(ddp.bucket_layout());
        if (options.stage == 2) ddp.register_comm_hook(std::make_shared<ZeroHook>(impl));
        return impl;
      }()) {}

ZeroOptimizer::ZeroOptimizer(std::shared_ptr<Impl> impl)
    : torch::optim::Optimizer([&] {
        std::vector<torch::Tensor> params;
        for (const Shard& s : impl->shards) params.insert(params.end(), s.members.begin(), s.members.end());
        return params;
      }(), impl->inner->defaults().clone()),
      impl_(std::move(impl)) {}

ZeroOptimizer::~ZeroOptimizer() = default;

torch::Tensor ZeroOptimizer::step(LossClosure closure) {
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode grad_mode(true);
    loss = closure();
  }
  torch::NoGradGuard no_grad;
  Impl& z = *impl_;
  const double lr = param_groups_.front().options().get_lr();
  auto layout = z.ddp.bucket_layout();
  if (!z.same_layout(layout)) z.relay_out(std::move(layout), lr);
  for (auto& group : z.inner->param_groups()) group.options().set_lr(lr);
  z.inner->step();
  if (z.world() > 1)
    for (Shard& s : z.shards) {
      if (s.block == 0) continue;
      torch::Tensor blocks = s.params.narrow(0, 0, z.world() * s.block);
      visit_span(blocks, "ZeRO parameters", [&](auto data) { z.comm.allgather(data); });
    }
  ++z.steps;
  return loss;
}

int ZeroOptimizer::stage() const { return impl_->options.stage; }

std::int64_t ZeroOptimizer::owned_elements() const {
  std::int64_t n = 0;
  for (const Shard& s : impl_->shards) n += s.block + s.rest;
  return n;
}

std::size_t ZeroOptimizer::state_bytes() const { return element_state_bytes(*impl_->inner); }

std::map<std::string, torch::Tensor> ZeroOptimizer::dense_state(
    const torch::OrderedDict<std::string, torch::Tensor>& named) {
  return impl_->dense(named, param_groups_.front().options().get_lr());
}

void ZeroOptimizer::load_dense_state(const torch::OrderedDict<std::string, torch::Tensor>& named,
                                     const std::map<std::string, torch::Tensor>& state) {
  if (const auto it = state.find("group0/lr"); it != state.end())
    param_groups_.front().options().set_lr(it->second.item<double>());
  impl_->load(named, state);
}

std::size_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer) {
  if (const auto* zero = dynamic_cast<const ZeroOptimizer*>(&optimizer)) return zero->state_bytes();
  return element_state_bytes(optimizer);
}

}  // namespace dagr
