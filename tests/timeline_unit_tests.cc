// The timeline recorder in one process (a group of one): the cap on events,
// tracks of other threads, and misuse. The merged multi-rank file is checked
// in timeline_tests.sh.
#include <gtest/gtest.h>

#include <time.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "dagr/error.h"
#include "dagr/train/timeline.h"

namespace dagr {
namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string temp_path(const char* name) { return ::testing::TempDir() + name; }

int count_spans(const nlohmann::json& trace, const std::string& name) {
  int n = 0;
  for (const auto& e : trace.at("traceEvents"))
    if (e.at("ph") == "X" && e.at("name") == name) ++n;
  return n;
}

TEST(Timeline, KeepsAtMostMaxEventsAndCountsTheRest) {
  Communicator comm;
  { timeline::Span before("before start"); }
  timeline::start(comm, {.max_events = 5});
  EXPECT_TRUE(timeline::enabled());
  for (int i = 0; i < 8; ++i) timeline::Span span("work");
  const std::string path = temp_path("timeline_cap.json");
  timeline::finish(comm, path);
  EXPECT_FALSE(timeline::enabled());
  { timeline::Span after("after finish"); }
  const auto trace = read_json(path);
  EXPECT_EQ(count_spans(trace, "work"), 5);
  EXPECT_EQ(count_spans(trace, "before start"), 0);
  EXPECT_EQ(trace.at("otherData").at("max_events_per_rank"), 5);
  EXPECT_EQ(trace.at("otherData").at("dropped_events").at("0"), 3);
  std::remove(path.c_str());
}

TEST(Timeline, OtherThreadsGetTracksOfTheirOwnAndSpansNest) {
  Communicator comm;
  timeline::start(comm);
  {
    timeline::Span outer("outer");
    { timeline::Span inner("inner"); }
    std::thread([] { timeline::Span span("elsewhere"); }).join();
  }
  const std::string path = temp_path("timeline_threads.json");
  timeline::finish(comm, path);
  const auto trace = read_json(path);
  std::map<std::string, nlohmann::json> spans;
  std::map<int, std::string> thread_names;
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") == "X") spans[e.at("name")] = e;
    if (e.at("ph") == "M" && e.at("name") == "thread_name") thread_names[e.at("tid")] = e.at("args").at("name");
  }
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans["outer"].at("tid"), 0);
  EXPECT_EQ(spans["inner"].at("tid"), 0);
  EXPECT_EQ(spans["elsewhere"].at("tid"), 2);
  EXPECT_EQ(thread_names[0], "training");
  EXPECT_EQ(thread_names[1], "communication");
  EXPECT_EQ(thread_names[2], "thread 2");
  const double outer_end = spans["outer"].at("ts").get<double>() + spans["outer"].at("dur").get<double>();
  const double inner_end = spans["inner"].at("ts").get<double>() + spans["inner"].at("dur").get<double>();
  EXPECT_LE(spans["outer"].at("ts").get<double>(), spans["inner"].at("ts").get<double>());
  EXPECT_LE(inner_end, outer_end);
  std::remove(path.c_str());
}

// The CPU time a span costs off (one relaxed load) and on (two clock reads, an
// append under a mutex); printed for docs/PERFORMANCE.md, with bounds far above them.
TEST(Timeline, ASpanIsCheapOffAndOn) {
  Communicator comm;
  constexpr int kSpans = 100000;
  // This thread's CPU time (wall time on a loaded box would count the other processes).
  auto cpu_ns = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return 1e9 * static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec);
  };
  auto time_spans = [&] {
    const double t0 = cpu_ns();
    for (int i = 0; i < kSpans; ++i) timeline::Span span("work");
    return (cpu_ns() - t0) / kSpans;
  };
  const double off = time_spans();
  timeline::start(comm, {.max_events = kSpans});
  const double on = time_spans();
  const std::string path = temp_path("timeline_cost.json");
  timeline::finish(comm, path);
  std::remove(path.c_str());
  std::printf("a span costs %.1f ns off, %.1f ns on\n", off, on);
  EXPECT_LT(off, 1000);
  EXPECT_LT(on, 50000);
}

TEST(Timeline, MisuseIsAnInputError) {
  Communicator comm;
  EXPECT_THROW(timeline::finish(comm, temp_path("never.json")), InputError);
  EXPECT_THROW(timeline::start(comm, {.max_events = 0}), InputError);
  timeline::start(comm);
  EXPECT_THROW(timeline::start(comm), InputError);
  const std::string path = temp_path("timeline_misuse.json");
  timeline::finish(comm, path);
  std::remove(path.c_str());
}

TEST(Timeline, AnUnwritablePathIsAnError) {
  Communicator comm;
  timeline::start(comm);
  EXPECT_THROW(timeline::finish(comm, "/nonexistent-folder/t.json"), Error);
  EXPECT_FALSE(timeline::enabled());
}

}  // namespace
}  // namespace dagr
