// The timeline recorder in one process (a group of one): the cap on events,
// tracks of other threads, and misuse. The merged multi-rank file is checked
// in timeline_tests.sh.
#include <gtest/gtest.h>

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
