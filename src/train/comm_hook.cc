#include "dagr/train/comm_hook.h"

#include "dagr/error.h"
#include "dagr/torch/tensor.h"
#include "train/hook_check.h"

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

HookWork HookWork::when_waited(std::function<HookWork()> start) {
  HookWork w(Work(), std::move(start));
  w.deferred_ = true;
  return w;
}

void HookWork::wait() {
  if (error_) std::rethrow_exception(error_);
  deferred_ = false;
  try {
    work_.wait();
    while (then_) {
      HookWork next = std::exchange(then_, nullptr)();
      work_ = std::move(next.work_);
      then_ = std::move(next.then_);
      work_.wait();
    }
  } catch (...) {
    error_ = std::current_exception();
    throw;
  }
}

std::map<std::string, torch::Tensor> CommHook::state(Communicator&) { return {}; }
void CommHook::load_state(const std::map<std::string, torch::Tensor>&) {}

namespace {

Work average_async(Communicator& comm, const torch::Tensor& t, ReduceOp op = ReduceOp::avg) {
  return visit_span(t, "DDP bucket", [&](auto data) { return comm.allreduce_async(data, op); });
}

void average(Communicator& comm, const torch::Tensor& t, ReduceOp op = ReduceOp::avg) {
  visit_span(t, "DDP bucket", [&](auto data) { comm.allreduce(data, op); });
}

class AllreduceHook : public CommHook {
 public:
  std::string name() const override { return "allreduce"; }
  bool plain_average() const override { return true; }
  HookWork run(Communicator& comm, GradBucket& bucket) override {
    if (!bucket.last) return HookWork(average_async(comm, bucket.buffer));
    return HookWork::when_waited([comm, buffer = bucket.buffer]() mutable {
      average(comm, buffer);
      return HookWork();
    });
  }
};

// PyTorch's fp16_compress_hook / bf16_compress_hook: the bucket divided by
// the world size (so the 16-bit sum cannot overflow where the average would
// not), cast to 16 bits, summed (the communicator's 16-bit sums accumulate in
// float32 and round once per combine), cast back into the bucket.
//
// DDP's check values (GradBucket::check: integers below 4096 = 8^4) ride in
// the same allreduce, each as its 4 base-8 digits, summed, not divided: a
// digit's sum over N ranks is an integer of at most 7N, which the 16-bit
// format holds exactly while 7N <= 2^(its significand bits) (bfloat16: N <= 36,
// float16: N <= 292), and so does every partial sum. The digit sums,
// recombined, are the exact sums of the values; divided by N they are what a
// float32 allreduce gives. A larger group sends the check in a float32
// allreduce of its own.
class CompressHook : public CommHook {
 public:
  explicit CompressHook(torch::ScalarType type) : type_(type) {}
  std::string name() const override { return type_ == torch::kFloat16 ? "fp16" : "bf16"; }
  bool carries_check() const override { return true; }
  HookWork run(Communicator& comm, GradBucket& bucket) override {
    const torch::Tensor buffer = bucket.buffer;
    if (buffer.scalar_type() == type_) {  // holds no check (DDP's is float)
      if (!bucket.last) return HookWork(average_async(comm, buffer));
      return HookWork::when_waited([comm, buffer]() mutable {
        average(comm, buffer);
        return HookWork();
      });
    }
    const std::int64_t n = buffer.numel() - bucket.check;
    const torch::Tensor gradients = buffer.narrow(0, 0, n), check = buffer.narrow(0, n, bucket.check);
    const std::int64_t exact = type_ == torch::kFloat16 ? 2048 : 256;
    const bool as_digits = bucket.check > 0 && (kBase - 1) * static_cast<std::int64_t>(comm.size()) <= exact;
    torch::Tensor compressed = torch::empty({n + (as_digits ? bucket.check * kDigits : 0)}, buffer.options().dtype(type_));
    // Divided in float32 and cast to 16 bits in one pass (no float32 temporary).
    torch::Tensor head = compressed.narrow(0, 0, n);
    at::div_out(head, gradients, static_cast<double>(comm.size()));
    if (as_digits) compressed.narrow(0, n, bucket.check * kDigits).copy_(digits_of(check));
    const bool check_apart = bucket.check > 0 && !as_digits;
    const int world = comm.size();
    auto unpack = [gradients, check, compressed, n, as_digits, world] {
      gradients.copy_(compressed.narrow(0, 0, n));
      if (as_digits) detail::write_check_average(check, sums_of(compressed.narrow(0, n, check.numel() * kDigits)), world);
    };
    if (bucket.last)
      return HookWork::when_waited([comm, compressed, check, check_apart, unpack]() mutable {
        average(comm, compressed, ReduceOp::sum);
        if (check_apart) average(comm, check);
        unpack();
        return HookWork();
      });
    Work work = average_async(comm, compressed, ReduceOp::sum);
    Work check_work = check_apart ? average_async(comm, check) : Work();
    return HookWork(std::move(work), [unpack, check_work] {
      unpack();
      return HookWork(check_work);
    });
  }

 private:
  static constexpr int kDigits = 4, kBase = 8;  // kBase^kDigits == GradBucket::kCheckLimit
  static_assert(kBase * kBase * kBase * kBase == GradBucket::kCheckLimit);

  // Each value's base-8 digits, least significant first (float32).
  static torch::Tensor digits_of(const torch::Tensor& check) {
    const torch::Tensor values = check.to(torch::kFloat64).contiguous();
    torch::Tensor digits = torch::empty({check.numel() * kDigits}, torch::kFloat32);
    for (std::int64_t i = 0; i < check.numel(); ++i) {
      const double v = values.data_ptr<double>()[i];
      DAGR_ENFORCE(v >= 0 && v < GradBucket::kCheckLimit && v == static_cast<double>(static_cast<std::int64_t>(v)),
                   InputError, "comm hook: a check value must be an integer from 0 to ", GradBucket::kCheckLimit - 1,
                   ", not ", v);
      auto x = static_cast<std::int64_t>(v);
      for (int k = 0; k < kDigits; ++k, x /= kBase) digits.data_ptr<float>()[i * kDigits + k] = static_cast<float>(x % kBase);
    }
    return digits;
  }
  // The values' sums from their digits' sums.
  static torch::Tensor sums_of(const torch::Tensor& digit_sums) {
    const torch::Tensor d = digit_sums.to(torch::kFloat64).contiguous();
    torch::Tensor sums = torch::zeros({d.numel() / kDigits}, torch::kFloat64);
    for (std::int64_t i = 0; i < sums.numel(); ++i)
      for (int k = kDigits - 1; k >= 0; --k)
        sums.data_ptr<double>()[i] = sums.data_ptr<double>()[i] * kBase + d.data_ptr<double>()[i * kDigits + k];
    return sums;
  }

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
