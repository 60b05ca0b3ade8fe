// The collectives, with ranks as threads: every world size 1-5, every dtype and
// op, counts 0, 1, primes, not divisible by the world size, and >= 16 M
// elements. Expected values come from a formula; float results are also
// compared bitwise with a sum in rank order, and random 16-bit floats with the
// float32 sum rounded once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "dagr/comm/secure_aggregation.h"
#include "dagr/comm/shared_buffer.h"
#include "dagr/error.h"
#include "executor.h"
#include "rank_threads.h"

namespace dagr {
namespace {

using testing::run_ranks;

// Rank r's element i. Small integers, so every dtype holds every sum exactly.
double value(ReduceOp op, int r, std::size_t i) {
  if (op == ReduceOp::prod) return 1 + ((r + i) % 2);
  return static_cast<double>((r + 1) * static_cast<int>(i % 7 + 1));
}

double expected(ReduceOp op, int size, std::size_t i, bool integer) {
  double acc = value(op, 0, i);
  for (int r = 1; r < size; ++r) {
    const double v = value(op, r, i);
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg: acc += v; break;
      case ReduceOp::prod: acc *= v; break;
      case ReduceOp::min: acc = std::min(acc, v); break;
      case ReduceOp::max: acc = std::max(acc, v); break;
    }
  }
  if (op == ReduceOp::avg) acc = integer ? std::floor(acc / size) : acc / size;
  return acc;
}


const std::vector<std::size_t> kCounts = {0, 1, 2, 3, 7, 13, 97, 1031, 4099, 65537, 300007};
const ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::min, ReduceOp::max, ReduceOp::prod};

template <class T>
void check_reducing_collectives(Communicator& comm) {
  const int n = comm.size(), me = comm.rank();
  constexpr bool integer = std::is_integral_v<T>;
  for (ReduceOp op : kOps) {
    for (std::size_t count : kCounts) {
      SCOPED_TRACE(::testing::Message() << name(dtype_of<T>()) << " " << name(op) << " count " << count);
      std::vector<T> in(count), out(count);
      for (std::size_t i = 0; i < count; ++i) in[i] = element_from_double<T>(value(op, me, i));
      // allreduce, out of place and in place
      comm.allreduce(std::span<const T>(in), std::span<T>(out), op);
      for (std::size_t i = 0; i < count; ++i)
        ASSERT_EQ(element_to_double(out[i]), expected(op, n, i, integer)) << "allreduce at " << i;
      std::vector<T> data = in;
      comm.allreduce(std::span<T>(data), op);
      for (std::size_t i = 0; i < count; ++i) ASSERT_EQ(element_to_double(data[i]), expected(op, n, i, integer));
      // reduce to the last rank: the others' buffers stay untouched
      const int root = n - 1;
      data = in;
      comm.reduce(std::span<T>(data), root, op);
      for (std::size_t i = 0; i < count; ++i)
        ASSERT_EQ(element_to_double(data[i]), me == root ? expected(op, n, i, integer) : value(op, me, i));
      // reduce_scatter: block b of rank r holds value(r, b*count + i)
      std::vector<T> blocks(count * n), mine(count);
      for (std::size_t i = 0; i < blocks.size(); ++i) blocks[i] = element_from_double<T>(value(op, me, i));
      comm.reduce_scatter(std::span<const T>(blocks), std::span<T>(mine), op);
      for (std::size_t i = 0; i < count; ++i)
        ASSERT_EQ(element_to_double(mine[i]), expected(op, n, me * count + i, integer)) << "reduce_scatter";
      comm.reduce_scatter(std::span<T>(blocks), op);
      for (std::size_t i = 0; i < count; ++i)
        ASSERT_EQ(element_to_double(blocks[me * count + i]), expected(op, n, me * count + i, integer));
    }
  }
}

template <class T>
void check_moving_collectives(Communicator& comm) {
  const int n = comm.size(), me = comm.rank();
  for (std::size_t count : kCounts) {
    SCOPED_TRACE(::testing::Message() << name(dtype_of<T>()) << " count " << count);
    const int root = count % n;
    std::vector<T> data(count);
    for (std::size_t i = 0; i < count; ++i) data[i] = element_from_double<T>(me == root ? value(ReduceOp::sum, root, i) : 0);
    comm.broadcast(std::span<T>(data), root);
    for (std::size_t i = 0; i < count; ++i) ASSERT_EQ(element_to_double(data[i]), value(ReduceOp::sum, root, i));

    std::vector<T> mine(count), all(count * n);
    for (std::size_t i = 0; i < count; ++i) mine[i] = element_from_double<T>(value(ReduceOp::sum, me, i));
    comm.allgather(std::span<const T>(mine), std::span<T>(all));
    for (int r = 0; r < n; ++r)
      for (std::size_t i = 0; i < count; ++i)
        ASSERT_EQ(element_to_double(all[r * count + i]), value(ReduceOp::sum, r, i)) << "allgather";
    std::vector<T> in_place(count * n);
    std::copy(mine.begin(), mine.end(), in_place.begin() + me * count);
    comm.allgather(std::span<T>(in_place));
    for (std::size_t i = 0; i < all.size(); ++i) ASSERT_EQ(element_to_double(in_place[i]), element_to_double(all[i]));
  }
}

class WorldSize : public ::testing::TestWithParam<int> {};

TEST_P(WorldSize, EveryDtypeOpAndCount) {
  run_ranks(GetParam(), [](Communicator& comm) {
    check_reducing_collectives<float>(comm);
    check_reducing_collectives<double>(comm);
    check_reducing_collectives<Half>(comm);
    check_reducing_collectives<BFloat16>(comm);
    check_reducing_collectives<std::int32_t>(comm);
    check_reducing_collectives<std::int64_t>(comm);
    check_reducing_collectives<std::uint8_t>(comm);
    check_moving_collectives<float>(comm);
    check_moving_collectives<double>(comm);
    check_moving_collectives<Half>(comm);
    check_moving_collectives<BFloat16>(comm);
    check_moving_collectives<std::int32_t>(comm);
    check_moving_collectives<std::int64_t>(comm);
    check_moving_collectives<std::uint8_t>(comm);
    comm.barrier();
  });
}

// Random floats: every rank gets the same bits, equal to a sum in rank order.
TEST_P(WorldSize, FloatSumIsBitwiseTheRankOrderSum) {
  const int n = GetParam();
  for (std::size_t count : {std::size_t{5}, std::size_t{1000}, std::size_t{1} << 20}) {
    std::vector<std::vector<float>> inputs(n, std::vector<float>(count));
    std::mt19937 gen(42);
    std::normal_distribution<float> dist;
    for (auto& v : inputs)
      for (auto& x : v) x = dist(gen);
    std::vector<float> reference(count);
    for (std::size_t i = 0; i < count; ++i) {
      float acc = inputs[0][i];
      for (int r = 1; r < n; ++r) acc += inputs[r][i];
      reference[i] = acc;
    }
    run_ranks(n, [&](Communicator& comm) {
      std::vector<float> v = inputs[comm.rank()];
      comm.allreduce(std::span<float>(v));
      ASSERT_EQ(0, std::memcmp(v.data(), reference.data(), count * sizeof(float)));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, WorldSize, ::testing::Values(1, 2, 3, 4, 5));

// Random non-integer 16-bit floats. The reduction's result is the float32 sum
// in rank order (divided by the world size for avg), rounded once to 16 bits:
// bitwise. Accumulating in 16 bits rounds after every addition and differs as
// soon as three ranks add. Counts below and above the one-step limit
// (DAGR_SHM_SMALL_MAX, DAGR_SHM_SMALL_READ) run both paths, the largest over
// several pipeline segments.
template <class T>
void check_16bit_rounded_once(int n, std::size_t count, ReduceOp op) {
  const std::string what = detail::concat(name(dtype_of<T>()), " ", name(op), ", world ", n, ", count ", count);
  std::mt19937 gen(17 * n + static_cast<int>(count));
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<std::vector<T>> in(n, std::vector<T>(count * n));  // count·n: reduce_scatter's input
  std::size_t non_integers = 0;
  for (auto& v : in)
    for (auto& x : v) {
      x = T(dist(gen));
      non_integers += static_cast<float>(x) != std::floor(static_cast<float>(x));
    }
  ASSERT_GT(non_integers, count * n * n / 2) << what;
  std::vector<std::uint16_t> reference(count * n);
  for (std::size_t i = 0; i < reference.size(); ++i) {
    float acc = static_cast<float>(in[0][i]);
    for (int r = 1; r < n; ++r) acc += static_cast<float>(in[r][i]);
    if (op == ReduceOp::avg) acc /= static_cast<float>(n);
    reference[i] = T(acc).bits;
  }
  // "" when got[i] has reference[offset + i]'s bits for every i, else the first difference.
  auto first_difference = [&](const std::vector<T>& got, std::size_t offset) -> std::string {
    for (std::size_t i = 0; i < got.size(); ++i)
      if (got[i].bits != reference[offset + i])
        return detail::concat("element ", i, " has bits ", got[i].bits, ", expected ", reference[offset + i]);
    return "";
  };
  run_ranks(n, [&](Communicator& comm) {
    const int me = comm.rank();
    std::vector<T> out(count);
    comm.allreduce(std::span<const T>(in[me].data(), count), std::span<T>(out), op);
    EXPECT_EQ(first_difference(out, 0), "") << what << ": allreduce on rank " << me;
    comm.reduce_scatter(std::span<const T>(in[me]), std::span<T>(out), op);
    EXPECT_EQ(first_difference(out, me * count), "") << what << ": reduce_scatter on rank " << me;
  });
}

TEST(SixteenBit, RandomValuesAreTheFloat32SumRoundedOnce) {
  for (int n : {2, 3, 4})
    for (std::size_t count : {std::size_t{7}, std::size_t{1000}, std::size_t{300007}})
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg}) {
        check_16bit_rounded_once<Half>(n, count, op);
        check_16bit_rounded_once<BFloat16>(n, count, op);
      }
}

// At least 16 M elements, through the pipelined path.
TEST(Large, SixteenMillionElements) {
  const std::size_t count = (std::size_t{16} << 20) + 3;
  for (int n : {2, 3}) {
    run_ranks(n, [&](Communicator& comm) {
      const int me = comm.rank();
      std::vector<float> v(count);
      for (std::size_t i = 0; i < count; ++i) v[i] = value(ReduceOp::sum, me, i);
      comm.allreduce(std::span<float>(v));
      for (std::size_t i = 0; i < count; i += 997) ASSERT_EQ(v[i], expected(ReduceOp::sum, n, i, false));
      ASSERT_EQ(v[count - 1], expected(ReduceOp::sum, n, count - 1, false));
      std::vector<std::int32_t> all(count * n), mine(count, me);
      comm.allgather(std::span<const std::int32_t>(mine), std::span<std::int32_t>(all));
      for (int r = 0; r < n; ++r) ASSERT_EQ(all[r * count + count / 2], r);
    });
  }
}

TEST(Async, WorksCompleteInIssueOrder) {
  run_ranks(3, [](Communicator& comm) {
    std::vector<std::vector<double>> bufs(8, std::vector<double>(50000, comm.rank() + 1.0));
    std::vector<Work> works;
    for (auto& b : bufs) works.push_back(comm.allreduce_async(std::span<double>(b)));
    comm.barrier();  // waits for the queue before running
    for (auto& w : works) w.wait();
    for (auto& b : bufs) ASSERT_EQ(b[49999], 6.0);
  });
}

// A background wait sleeps after 5 µs; a caller who then blocks in
// Work::wait wakes it, so that it spins like a caller's own wait.
TEST(Async, ACallerWhoWaitsWakesTheSleepingBackgroundWait) {
  const std::uint64_t before = detail::background_wakes();
  ::setenv("DAGR_SPIN_US", "100", 1);  // waits spin even where the machine has one core
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> v(1000, comm.rank() + 1.0f);
    if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Work w = comm.allreduce_async(std::span<float>(v));
    if (comm.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // its wait is asleep by now
    w.wait();
    ASSERT_EQ(v[999], 3.0f);
  });
  ::unsetenv("DAGR_SPIN_US");
  EXPECT_GE(detail::background_wakes(), before + 1);
}

// The same for a blocking call queued behind it: waiting for the calls ahead
// is waiting for the background thread (Executor::run_inline).
TEST(Async, ABlockingCallBehindASleepingBackgroundWaitWakesIt) {
  const std::uint64_t before = detail::background_wakes();
  ::setenv("DAGR_SPIN_US", "100", 1);
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> v(1000, comm.rank() + 1.0f), u(10, 1.0f);
    if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Work w = comm.allreduce_async(std::span<float>(v));
    if (comm.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // its wait is asleep by now
    comm.allreduce(std::span<float>(u));
    ASSERT_EQ(u[9], 2.0f);
    w.wait();
    ASSERT_EQ(v[999], 3.0f);
  });
  ::unsetenv("DAGR_SPIN_US");
  EXPECT_GE(detail::background_wakes(), before + 1);
}

TEST(Async, WaitRethrowsTheBackgroundError) {
  EXPECT_THROW(run_ranks(2, [](Communicator& comm) {
    std::vector<float> v(10);
    Work w = comm.rank() == 0 ? comm.allreduce_async(std::span<float>(v))
                              : comm.broadcast_async(std::span<float>(v), 0);
    w.wait();
  }), MismatchError);
}

TEST(Split, GroupsByColorOrderedByKey) {
  run_ranks(5, [](Communicator& comm) {
    const int me = comm.rank();
    auto sub = comm.split(me % 2, -me);  // evens {0,2,4} and odds {1,3}, reversed
    ASSERT_TRUE(sub.has_value());
    ASSERT_EQ(sub->size(), me % 2 == 0 ? 3 : 2);
    const int expected_rank = me % 2 == 0 ? (4 - me) / 2 : (3 - me) / 2;
    ASSERT_EQ(sub->rank(), expected_rank);
    std::vector<int> v(100003, me);
    sub->allreduce(std::span<int>(v));
    ASSERT_EQ(v[100002], me % 2 == 0 ? 6 : 4);
    auto none = comm.split(me == 0 ? -1 : 0, 0);  // negative color: no group
    ASSERT_EQ(none.has_value(), me != 0);
    if (none) {
      auto nested = none->split(0, 0);
      ASSERT_EQ(nested->size(), 4);
      nested->barrier();
    }
    comm.barrier();  // the parent still works
  });
}

TEST(PointToPoint, RingOfMessagesLargerThanTheChannel) {
  run_ranks(4, [](Communicator& comm) {
    const int n = comm.size(), me = comm.rank();
    for (std::size_t count : {std::size_t{0}, std::size_t{3}, std::size_t{1} << 20}) {
      std::vector<double> out(count, me), in(count, -1);
      const int next = (me + 1) % n, prev = (me + n - 1) % n;
      Work w = comm.send_async(std::span<const double>(out), next, 7);
      comm.recv(std::span<double>(in), prev, 7);
      w.wait();
      for (double x : in) ASSERT_EQ(x, prev);
    }
  });
}

TEST(PointToPoint, MismatchedRecvIsAnError) {
  std::string receiver_error;
  run_ranks(2, [&](Communicator& comm) {
    std::vector<float> v(10);
    if (comm.rank() == 0) {
      try {
        comm.send(std::span<const float>(v), 1, 0);  // may see the rejection, or be done first
      } catch (const MismatchError&) {
      }
      return;
    }
    try {
      comm.recv(std::span<float>(v).first(5), 0, 0);
    } catch (const MismatchError& e) {
      receiver_error = e.what();
    }
  });
  EXPECT_NE(receiver_error.find("count=10"), std::string::npos) << receiver_error;
  EXPECT_NE(receiver_error.find("count=5"), std::string::npos) << receiver_error;
}

// Each rank calls something different; every rank must raise, naming both sides.
void expect_mismatch_everywhere(const std::function<void(Communicator&)>& call) {
  std::atomic<int> raised{0};
  run_ranks(3, [&](Communicator& comm) {
    try {
      call(comm);
    } catch (const MismatchError& e) {
      const std::string m = e.what();
      if (m.find("rank") != std::string::npos && m.find(" but ") != std::string::npos) ++raised;
      return;
    }
  }, std::chrono::seconds(10));
  EXPECT_EQ(raised.load(), 3);
}

TEST(Mismatch, RaisedOnEveryRank) {
  expect_mismatch_everywhere([](Communicator& c) {  // count
    std::vector<float> v(10 + (c.rank() == 1));
    c.allreduce(std::span<float>(v));
  });
  expect_mismatch_everywhere([](Communicator& c) {  // op
    std::vector<float> v(10);
    c.allreduce(std::span<float>(v), c.rank() == 2 ? ReduceOp::max : ReduceOp::sum);
  });
  expect_mismatch_everywhere([](Communicator& c) {  // dtype, large messages
    std::vector<double> d(1 << 20);
    std::vector<float> f(1 << 20);
    if (c.rank() == 0) c.allreduce(std::span<double>(d));
    else c.allreduce(std::span<float>(f));
  });
  expect_mismatch_everywhere([](Communicator& c) {  // root
    std::vector<int> v(4);
    c.broadcast(std::span<int>(v), c.rank() == 0 ? 0 : 1);
  });
  expect_mismatch_everywhere([](Communicator& c) {  // order of calls
    std::vector<float> v(10);
    if (c.rank() == 1) { c.barrier(); c.allreduce(std::span<float>(v)); }
    else { c.allreduce(std::span<float>(v)); c.barrier(); }
  });
}

TEST(Failure, AFailedCommunicatorRefusesFurtherCalls) {
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> v(3 + comm.rank());
    EXPECT_THROW(comm.allreduce(std::span<float>(v)), MismatchError);
    try {
      comm.barrier();
      ADD_FAILURE() << "barrier ran on a failed communicator";
    } catch (const MismatchError&) {
      ADD_FAILURE() << "wrong error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("earlier failure"), std::string::npos);
    }
  });
}

TEST(Failure, SilentPeerIsATimeoutNamingIt) {
  run_ranks(2, [](Communicator& comm) {
    if (comm.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
      return;  // never calls; leaves after rank 0 timed out
    }
    std::vector<float> v(8);
    const auto start = std::chrono::steady_clock::now();
    try {
      comm.allreduce(std::span<float>(v), ReduceOp::sum, {.timeout = std::chrono::milliseconds(200)});
      ADD_FAILURE() << "no timeout";
    } catch (const TimeoutError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
  });
}

TEST(Failure, DepartedPeerIsAPeerError) {
  run_ranks(3, [](Communicator& comm) {
    if (comm.rank() == 2) return;  // destroys its communicator at once
    std::vector<float> v(1 << 20);
    try {
      comm.allreduce(std::span<float>(v));
      ADD_FAILURE() << "no error";
    } catch (const PeerError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
    }
  });
}

TEST(Input, SizesThatDoNotFitAreInputErrors) {
  Communicator solo;
  std::vector<float> a(4), b(5);
  EXPECT_THROW(solo.allreduce(std::span<const float>(a), std::span<float>(b)), InputError);
  EXPECT_THROW(solo.broadcast(std::span<float>(a), 3), InputError);
  EXPECT_THROW(solo.send(std::span<const float>(a), 0), InputError);
  solo.allreduce(std::span<float>(a));  // still usable
  EXPECT_EQ(solo.size(), 1);
}

}  // namespace
}  // namespace dagr

namespace dagr {
namespace {

// Secure aggregation's bad inputs are InputErrors naming the problem; the
// encoding is monotone and decodes to within half a quantum.
TEST(SecureAggregation, RefusesWhatCouldOverflowOrIsNotASum) {
  testing::run_ranks(4, [](Communicator& comm) {
    try {
      SecureAggregator too_fine(comm, {.clip = 8.0f, .level_bits = 31});
      ADD_FAILURE() << "4 ranks of 2^31 levels must be refused";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("at most level_bits = 30"), std::string::npos) << e.what();
    }
    EXPECT_THROW(SecureAggregator(comm, {.clip = -1.0f}), InputError);
    SecureAggregator secure(comm, {.clip = 4.0f, .level_bits = 20});
    std::vector<float> v(8, 1.0f);
    EXPECT_THROW(secure.allreduce(std::span<float>(v), ReduceOp::max), InputError);
    EXPECT_EQ(secure.encode(-4.0f), 0u);
    EXPECT_EQ(secure.encode(-100.0f), 0u);
    EXPECT_EQ(secure.encode(4.0f), (1u << 20) - 2);
    EXPECT_EQ(secure.encode(100.0f), (1u << 20) - 2);
    EXPECT_EQ(secure.encode(0.0f), (1u << 19) - 1);  // L/2 stands for 0
    for (float x : {-3.9f, -0.001f, 0.0f, 0.3f, 2.5f}) {
      EXPECT_LE(secure.encode(x - 0.01f), secure.encode(x));
      EXPECT_NEAR(secure.decode(secure.encode(x), 1), x, 0.5 / secure.scale() + 1e-6);
    }
    secure.allreduce(std::span<float>(v), ReduceOp::avg);  // the group is still usable after the refusals
    for (float x : v) EXPECT_NEAR(x, 1.0f, 1e-5);
  });
}

// allocate_shared: an in-place allreduce on shared buffers gives the staged
// path's bits, for sum, max and avg, float32 and int64, sizes around the
// pieces' boundaries and at an offset into the buffer; with one rank's buffer
// in ordinary memory it is still right (it takes the staged path); the buffer
// is aligned and zeroed; different sizes are a MismatchError on every rank,
// after which the group still works.
TEST(SharedBuffers, InPlaceAllreduceEqualsStaged) {
  for (int size : {2, 3, 4})
    run_ranks(size, [&](Communicator& comm) {
      const int me = comm.rank();
      SharedBuffer buf = comm.allocate_shared((1 << 20) * sizeof(float) + 256);
      EXPECT_TRUE(buf.shared());
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buf.data()) % 64, 0u);
      EXPECT_TRUE(std::all_of(buf.data(), buf.data() + buf.size(), [](std::byte b) { return b == std::byte{0}; }));
      for (std::size_t count : {std::size_t{16411}, std::size_t{65537}, std::size_t{300001}})
        for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::avg}) {
          const std::size_t offset = count == 65537 ? 16 : 0;  // elements into the buffer
          std::span<float> shared = buf.as<float>().subspan(offset, count);
          std::vector<float> staged(count);
          for (std::size_t i = 0; i < count; ++i) staged[i] = shared[i] = std::sin(0.1f * i + 0.7f * me);
          comm.allreduce(shared, op);
          comm.allreduce(std::span<float>(staged), op);
          EXPECT_EQ(std::memcmp(shared.data(), staged.data(), count * sizeof(float)), 0)
              << "size " << size << " count " << count << " op " << name(op);
        }
      std::span<std::int64_t> ints = buf.as<std::int64_t>().subspan(0, 100000);
      for (std::size_t i = 0; i < ints.size(); ++i) ints[i] = static_cast<std::int64_t>(i) * (me + 1);
      comm.allreduce(ints);
      const std::int64_t ranks_sum = static_cast<std::int64_t>(size) * (size + 1) / 2;
      for (std::size_t i = 0; i < ints.size(); i += 997) EXPECT_EQ(ints[i], static_cast<std::int64_t>(i) * ranks_sum);

      std::vector<float> ordinary(30000, 1.0f);  // rank 0's buffer is not shared: the staged path, still right
      std::span<float> mixed = me == 0 ? std::span<float>(ordinary) : buf.as<float>().subspan(0, 30000);
      std::fill(mixed.begin(), mixed.end(), 1.0f);
      comm.allreduce(mixed);
      EXPECT_EQ(mixed[29999], static_cast<float>(size));

      EXPECT_THROW(comm.allocate_shared(me == 0 ? 4096 : 8192), MismatchError);
      SharedBuffer again = comm.allocate_shared(4096);  // the group goes on
      EXPECT_EQ(again.size(), 4096u);
    });
}

}  // namespace
}  // namespace dagr
