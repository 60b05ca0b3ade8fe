#include "collective_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

#include "dagr/comm/secure_aggregation.h"
#include "dagr/comm/shared_buffer.h"
#include "dagr/error.h"

namespace dagr::cli {
namespace {

using Clock = std::chrono::steady_clock;

// Rank r's element i: small integers, exact in every dtype even summed over 16 ranks.
double input_value(int r, std::size_t i) { return (r % 8 + 1) * static_cast<double>(i % 5 + 1); }


double reduced_value(ReduceOp op, int n, std::size_t i, bool integer) {
  double acc = input_value(0, i);
  for (int r = 1; r < n; ++r) {
    const double v = input_value(r, i);
    if (op == ReduceOp::min) acc = std::min(acc, v);
    else if (op == ReduceOp::max) acc = std::max(acc, v);
    else if (op == ReduceOp::prod) acc *= v;
    else acc += v;
  }
  if (op == ReduceOp::avg) acc = integer ? std::floor(acc / n) : acc / n;
  return acc;
}

template <class T>
BenchRow bench_typed(Communicator& comm, const BenchSpec& spec) {
  const int n = comm.size(), me = comm.rank();
  const std::size_t es = sizeof(T);
  // count: elements per rank's share (allgather: sent; reduce_scatter: received).
  const bool blocked = spec.kind == OpKind::allgather || spec.kind == OpKind::reduce_scatter;
  const std::size_t total = spec.bytes / es;
  const std::size_t count = blocked ? total / n : total;
  const std::size_t in_count = spec.kind == OpKind::reduce_scatter ? count * n : count;
  const std::size_t out_count = spec.kind == OpKind::allgather ? count * n : count;
  std::vector<T> in(in_count), out(out_count);
  // --shared: in place, in memory the group shares (no staging copies); the
  // timed calls sum sums, as an in-place benchmark does.
  SharedBuffer shared;
  if (spec.shared) {
    DAGR_ENFORCE(spec.kind == OpKind::allreduce && !spec.secure, InputError, "--shared is for allreduce, without --secure");
    shared = comm.allocate_shared(out_count * es);
  }
  const std::span<T> result = spec.shared ? shared.as<T>().first(out_count)
                              : spec.kind == OpKind::broadcast ? std::span<T>(in) : std::span<T>(out);

  auto fill = [&] {
    for (std::size_t i = 0; i < in_count; ++i)
      in[i] = element_from_double<T>(spec.kind == OpKind::broadcast && me != 0 ? 0 : input_value(me, i));
    if (spec.shared) std::copy(in.begin(), in.end(), result.begin());
  };
  // --secure: the same inputs, masked and summed in fixed point (clip 64 holds them: at most 40).
  std::optional<SecureAggregator> secure;
  if (spec.secure) {
    DAGR_ENFORCE((std::is_same_v<T, float> && spec.kind == OpKind::allreduce &&
                  (spec.op == ReduceOp::sum || spec.op == ReduceOp::avg)),
                 InputError, "--secure is for allreduce of float32, sum or avg");
    secure.emplace(comm, SecureAggregationOptions{.clip = 64.0f});
  }
  auto call = [&] {
    if constexpr (std::is_same_v<T, float>) {
      if (secure) return secure->allreduce(std::span<const float>(in), std::span<float>(out), spec.op);
    }
    if (spec.shared) return comm.allreduce(result, spec.op);
    switch (spec.kind) {
      case OpKind::allreduce: return comm.allreduce(std::span<const T>(in), std::span<T>(out), spec.op);
      case OpKind::allgather: return comm.allgather(std::span<const T>(in), std::span<T>(out));
      case OpKind::reduce_scatter:
        return comm.reduce_scatter(std::span<const T>(in), std::span<T>(out), spec.op);
      case OpKind::broadcast: return comm.broadcast(std::span<T>(in), 0);
      default: throw InputError("dagr bench: unsupported collective");
    }
  };
  fill();
  const int warmup = spec.warmup >= 0 ? spec.warmup : spec.bytes < (64u << 10) ? 100 : 5;
  for (int i = 0; i < warmup; ++i) call();

  int iters = spec.iters;
  if (iters <= 0) {  // rank 0 sizes the run; everyone must loop the same number of times
    comm.barrier();
    const auto t0 = Clock::now();
    for (int i = 0; i < 3; ++i) call();
    const double per_call = std::chrono::duration<double>(Clock::now() - t0).count() / 3;
    std::int64_t chosen = std::clamp<std::int64_t>(static_cast<std::int64_t>(spec.seconds / std::max(per_call, 1e-9)), 3, 100000);
    comm.broadcast(std::span<std::int64_t>(&chosen, 1), 0);
    iters = static_cast<int>(chosen);
  }
  comm.barrier();
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i) call();
  double seconds = std::chrono::duration<double>(Clock::now() - start).count() / iters;
  comm.allreduce(std::span<double>(&seconds, 1), ReduceOp::max);

  // One more call on fresh inputs, checked against the formula.
  fill();
  std::fill(out.begin(), out.end(), element_from_double<T>(0));
  call();
  std::int32_t wrong = 0;
  for (std::size_t i = 0; i < result.size(); ++i) {
    double want = 0;
    switch (spec.kind) {
      case OpKind::allreduce: want = reduced_value(spec.op, n, i, std::is_integral_v<T>); break;
      case OpKind::reduce_scatter: want = reduced_value(spec.op, n, me * count + i, std::is_integral_v<T>); break;
      case OpKind::allgather: want = input_value(static_cast<int>(i / std::max<std::size_t>(count, 1)), i % std::max<std::size_t>(count, 1)); break;
      case OpKind::broadcast: want = input_value(0, i); break;
      default: break;
    }
    if constexpr (std::is_integral_v<T>) want = static_cast<double>(element_from_double<T>(want));  // wrap like the type does
    const double got = element_to_double(result[i]);
    if (std::is_integral_v<T> ? got != want : std::abs(got - want) > 1e-2 * std::abs(want)) ++wrong;
  }
  comm.allreduce(std::span<std::int32_t>(&wrong, 1), ReduceOp::sum);

  BenchRow row;
  row.bytes = std::max(in_count, out_count) * es;
  row.count = std::max(in_count, out_count);
  row.time_us = seconds * 1e6;
  row.algbw = static_cast<double>(row.bytes) / seconds / 1e9;
  row.busbw = row.algbw * bus_factor(spec.kind, n);
  row.correct = wrong == 0;
  return row;
}

}  // namespace

double bus_factor(OpKind kind, int n) {
  switch (kind) {
    case OpKind::allreduce: return 2.0 * (n - 1) / n;
    case OpKind::allgather:
    case OpKind::reduce_scatter: return static_cast<double>(n - 1) / n;
    default: return 1.0;
  }
}

BenchRow bench_collective(Communicator& comm, const BenchSpec& spec) {
  switch (spec.dtype) {
    case DType::float32: return bench_typed<float>(comm, spec);
    case DType::float64: return bench_typed<double>(comm, spec);
    case DType::float16: return bench_typed<Half>(comm, spec);
    case DType::bfloat16: return bench_typed<BFloat16>(comm, spec);
    case DType::int32: return bench_typed<std::int32_t>(comm, spec);
    case DType::int64: return bench_typed<std::int64_t>(comm, spec);
    case DType::uint8: return bench_typed<std::uint8_t>(comm, spec);
  }
  throw InputError("unknown dtype");
}

}  // namespace dagr::cli
