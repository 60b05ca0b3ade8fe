#include "dagr/train/comm_hook.h"

#include "dagr/error.h"
#include "dagr/torch/tensor.h"

namespace dagr {

std::vector<torch::Tensor> GradBucket::gradients() const {
  std::vector<torch::Tensor> views;
  std::int64_t offset = 0;
  for (const auto& shape : shapes) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    views.push_back(buffer.narrow(0, offset, n).view(shape));
    offset += n;
  }
  return views;
}

void HookWork::wait() {
  work_.wait();
  while (then_) {
    HookWork next = std::exchange(then_, nullptr)();
    work_ = std::move(next.work_);
    then_ = std::move(next.then_);
    work_.wait();
  }
}

std::map<std::string, torch::Tensor> CommHook::state(Communicator&) { return {}; }
void CommHook::load_state(const std::map<std::string, torch::Tensor>&) {}

namespace {

Work average_async(Communicator& comm, const torch::Tensor& t, ReduceOp op = ReduceOp::avg) {
  return visit_span(t, "DDP bucket", [&](auto data) { return comm.allreduce_async(data, op); });
}

class AllreduceHook : public CommHook {
 public:
  std::string name() const override { return "allreduce"; }
  bool plain_average() const override { return true; }
  HookWork run(Communicator& comm, GradBucket& bucket) override { return HookWork(average_async(comm, bucket.buffer)); }
};

// PyTorch's fp16_compress_hook / bf16_compress_hook: the bucket divided by
// the world size (so the 16-bit sum cannot overflow where the average would
// not), cast to 16 bits, summed (the communicator's 16-bit sums accumulate in
// float32 and round once per combine), cast back into the bucket.
class CompressHook : public CommHook {
 public:
  explicit CompressHook(torch::ScalarType type) : type_(type) {}
  std::string name() const override { return type_ == torch::kFloat16 ? "fp16" : "bf16"; }
  HookWork run(Communicator& comm, GradBucket& bucket) override {
    const torch::Tensor buffer = bucket.buffer;
    if (buffer.scalar_type() == type_) return HookWork(average_async(comm, buffer));
    torch::Tensor compressed = (buffer / comm.size()).to(type_);
    Work work = average_async(comm, compressed, ReduceOp::sum);
    return HookWork(std::move(work), [buffer, compressed] {
      buffer.copy_(compressed);
      return HookWork();
    });
  }

 private:
  torch::ScalarType type_;
};

class SecureHook : public CommHook {
 public:
  SecureHook(Communicator comm, SecureAggregationOptions options) : aggregator_(std::move(comm), options) {}
  std::string name() const override { return "secure"; }
  HookWork run(Communicator& comm, GradBucket& bucket) override {
    DAGR_ENFORCE(comm.size() == aggregator_.communicator().size() && comm.rank() == aggregator_.communicator().rank(),
                 InputError, "secure aggregation hook: run on another group than the one it was made for");
    aggregator_.allreduce(span_of<float>(bucket.buffer, "secure aggregation bucket"), ReduceOp::avg);
    return HookWork();
  }

 private:
  SecureAggregator aggregator_;
};

}  // namespace

std::shared_ptr<CommHook> allreduce_hook() { return std::make_shared<AllreduceHook>(); }
std::shared_ptr<CommHook> fp16_compress_hook() { return std::make_shared<CompressHook>(torch::kFloat16); }
std::shared_ptr<CommHook> bf16_compress_hook() { return std::make_shared<CompressHook>(torch::kBFloat16); }
std::shared_ptr<CommHook> secure_aggregation_hook(Communicator comm, SecureAggregationOptions options) {
  return std::make_shared<SecureHook>(std::move(comm), options);
}

}  // namespace dagr
