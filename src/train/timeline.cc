// The timeline recorder (dagr/train/timeline.h): one per process, spans kept
// in memory up to the cap, merged on rank 0 into Chrome-trace JSON by finish().
#include "dagr/train/timeline.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <span>
#include <thread>
#include <nlohmann/json.hpp>

#include "dagr/error.h"

namespace dagr::timeline {
namespace {

using Clock = std::chrono::steady_clock;
std::int64_t ns_of(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
std::int64_t now_ns() { return ns_of(Clock::now()); }

constexpr int kTrainingTid = 0, kCommTid = 1;

// A complete span. Communication spans (tid kCommTid) carry the bucket's
// figures and their group; the others only a name.
struct Event {
  const char* name = nullptr;  // nullptr: a communication span, named from its algorithm and bucket
  const std::string* algorithm = nullptr;
  const std::string* group = nullptr;
  int tid = kTrainingTid;
  int bucket = -1;
  std::int64_t start_ns = 0, end_ns = 0, step = -1, bytes = -1;
};

struct Recorder {
  std::mutex mutex;
  std::condition_variable drained;  // in_flight fell to 0
  std::vector<Event> events;
  std::size_t max_events = 0;
  std::int64_t dropped = 0;
  int pid = 0;
  std::int64_t sync_ns = 0;  // this rank's clock right after start()'s barrier
  std::thread::id training_thread;
  std::map<std::thread::id, int> other_threads;  // tid 2, 3, …
  std::deque<std::string> names;   // interned algorithm and group names (stable addresses)
  int in_flight = 0;               // DdpTrace items queued or being handled by watchers
};

Recorder& recorder() {
  static Recorder r;
  return r;
}

// Keeps `e` unless the cap is reached; `tid` < 0: the calling thread's track.
void add(Event e) {
  Recorder& r = recorder();
  std::lock_guard lock(r.mutex);
  if (!enabled()) return;
  if (r.events.size() >= r.max_events) {
    ++r.dropped;
    return;
  }
  if (e.tid < 0) {
    const auto id = std::this_thread::get_id();
    if (id == r.training_thread) e.tid = kTrainingTid;
    else e.tid = r.other_threads.try_emplace(id, static_cast<int>(r.other_threads.size()) + 2).first->second;
  }
  r.events.push_back(e);
}

void span_here(const char* name, std::int64_t start_ns, std::int64_t end_ns) {
  Event e;
  e.name = name;
  e.tid = -1;
  e.start_ns = start_ns;
  e.end_ns = end_ns;
  add(e);
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "?";
  return name;
}

// ---- the merged file ----

// Nanoseconds as microseconds with three decimals (the trace's unit).
void append_us(std::string& out, std::int64_t ns) {
  if (ns < 0) {
    out += '-';
    ns = -ns;
  }
  char buffer[32];
  auto end = std::to_chars(buffer, buffer + sizeof buffer, ns / 1000).ptr;
  out.append(buffer, end);
  const int frac = static_cast<int>(ns % 1000);
  out += '.';
  out += static_cast<char>('0' + frac / 100);
  out += static_cast<char>('0' + frac / 10 % 10);
  out += static_cast<char>('0' + frac % 10);
}

void append_int(std::string& out, std::int64_t v) {
  char buffer[24];
  out.append(buffer, std::to_chars(buffer, buffer + sizeof buffer, v).ptr);
}

void append_string(std::string& out, const std::string& s) { out += nlohmann::json(s).dump(); }

// One rank's part, as rank 0 reads it.
struct Part {
  int pid = 0;
  std::string host;
  std::int64_t sync_ns = 0, dropped = 0, shift_ns = 0;
  std::vector<std::pair<int, std::string>> threads;
  nlohmann::json events;  // [[name, tid, start, end, step, bucket, bytes, algorithm, group], …]
};

std::vector<std::uint8_t> encode_part(Recorder& r) {
  nlohmann::json events = nlohmann::json::array();
  for (const Event& e : r.events)
    events.push_back({e.name ? nlohmann::json(e.name) : nlohmann::json(), e.tid, e.start_ns, e.end_ns, e.step,
                      e.bucket, e.bytes, e.algorithm ? nlohmann::json(*e.algorithm) : nlohmann::json(),
                      e.group ? nlohmann::json(*e.group) : nlohmann::json()});
  nlohmann::json threads = nlohmann::json::array({{kTrainingTid, "training"}, {kCommTid, "communication"}});
  for (const auto& [id, tid] : r.other_threads) threads.push_back({tid, "thread " + std::to_string(tid)});
  const nlohmann::json part{{"pid", r.pid},         {"host", host_name()}, {"sync_ns", r.sync_ns},
                            {"dropped", r.dropped}, {"threads", threads},  {"events", std::move(events)}};
  return nlohmann::json::to_msgpack(part);
}

Part decode_part(const std::vector<std::uint8_t>& bytes) {
  nlohmann::json j = nlohmann::json::from_msgpack(bytes);
  Part p;
  p.pid = j.at("pid");
  p.host = j.at("host");
  p.sync_ns = j.at("sync_ns");
  p.dropped = j.at("dropped");
  for (const auto& t : j.at("threads")) p.threads.emplace_back(t.at(0).get<int>(), t.at(1).get<std::string>());
  p.events = std::move(j.at("events"));
  return p;
}

// The merged trace. Clock: on one host every rank's raw clock (the same
// CLOCK_MONOTONIC), else each rank's shifted so that its moment after
// start()'s barrier is rank 0's; the origin is that moment (the earliest
// rank's, on one host). Flow arrows: the communication spans of one
// collective (same group, step and bucket) are joined, from the one whose
// middle comes first ("s") to each of the others ("f", bound to the span that
// encloses it), each pair with an id of its own; the arrow points sit in the
// middle of the spans (a span with no length: its start, which may be where
// the span before it ends).
std::string merge(std::vector<Part>& parts, std::size_t max_events) {
  std::sort(parts.begin(), parts.end(), [](const Part& a, const Part& b) { return a.pid < b.pid; });
  bool one_host = true;
  for (const Part& p : parts) one_host = one_host && p.host == parts.front().host;
  std::int64_t origin = std::numeric_limits<std::int64_t>::max();
  for (Part& p : parts) {
    p.shift_ns = one_host ? 0 : parts.front().sync_ns - p.sync_ns;
    origin = std::min(origin, p.sync_ns + p.shift_ns);
  }
  std::string out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  auto begin_event = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  struct CommSpan {
    int pid;
    std::int64_t start, end;  // shifted, from the origin
  };
  std::map<std::tuple<std::string, std::int64_t, std::int64_t>, std::vector<CommSpan>> collectives;
  for (const Part& p : parts) {
    begin_event();
    out += "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":";
    append_int(out, p.pid);
    out += ",\"args\":{\"name\":\"rank ";
    append_int(out, p.pid);
    out += "\"}},\n{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":";
    append_int(out, p.pid);
    out += ",\"args\":{\"sort_index\":";
    append_int(out, p.pid);
    out += "}}";
    for (const auto& [tid, name] : p.threads) {
      out += ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":";
      append_int(out, p.pid);
      out += ",\"tid\":";
      append_int(out, tid);
      out += ",\"args\":{\"name\":";
      append_string(out, name);
      out += "}}";
    }
    for (const auto& e : p.events) {
      const int tid = e[1];
      const std::int64_t start = e[2].get<std::int64_t>() + p.shift_ns - origin;
      const std::int64_t end = e[3].get<std::int64_t>() + p.shift_ns - origin;
      const bool comm = tid == kCommTid;
      begin_event();
      out += "{\"ph\":\"X\",\"cat\":";
      out += comm ? "\"comm\"" : "\"train\"";
      out += ",\"name\":";
      append_string(out, comm ? ::dagr::detail::concat(e[7].get<std::string>(), " bucket ", e[5].get<int>())
                              : e[0].get<std::string>());
      out += ",\"pid\":";
      append_int(out, p.pid);
      out += ",\"tid\":";
      append_int(out, tid);
      out += ",\"ts\":";
      append_us(out, start);
      out += ",\"dur\":";
      append_us(out, end - start);
      if (comm) {
        out += ",\"args\":{\"step\":";
        append_int(out, e[4]);
        out += ",\"bucket\":";
        append_int(out, e[5]);
        out += ",\"bytes\":";
        append_int(out, e[6]);
        out += ",\"algorithm\":";
        append_string(out, e[7]);
        out += ",\"group\":";
        append_string(out, e[8].is_null() ? std::string() : e[8].get<std::string>());
        out += "}";
        if (!e[8].is_null())
          collectives[{e[8].get<std::string>(), e[4].get<std::int64_t>(), e[5].get<std::int64_t>()}].push_back(
              {p.pid, start, end});
      }
      out += "}";
    }
  }
  std::int64_t flow_id = 0;
  auto flow_point = [&](const char* phase, const CommSpan& s, std::int64_t id) {
    begin_event();
    out += "{\"ph\":\"";
    out += phase;
    out += "\",\"cat\":\"comm\",\"name\":\"collective\",\"id\":";
    append_int(out, id);
    out += ",\"pid\":";
    append_int(out, s.pid);
    out += ",\"tid\":1,\"ts\":";
    append_us(out, s.start + (s.end - s.start) / 2);
    if (phase[0] == 'f') out += ",\"bp\":\"e\"";
    out += "}";
  };
  for (auto& [key, spans] : collectives) {
    auto middle = [](const CommSpan& s) { return s.start + (s.end - s.start) / 2; };
    std::sort(spans.begin(), spans.end(), [&](const CommSpan& a, const CommSpan& b) { return middle(a) < middle(b); });
    for (std::size_t k = 1; k < spans.size(); ++k) {
      ++flow_id;
      flow_point("s", spans.front(), flow_id);
      flow_point("f", spans[k], flow_id);
    }
  }
  nlohmann::json dropped = nlohmann::json::object();
  for (const Part& p : parts) dropped[std::to_string(p.pid)] = p.dropped;
  const nlohmann::json other{
      {"producer", "dagr timeline"},
      {"clock", one_host ? "steady_clock of one host; origin: the end of timeline::start()'s barrier"
                         : "each host's steady_clock, aligned at the end of timeline::start()'s barrier"},
      {"max_events_per_rank", max_events},
      {"dropped_events", dropped}};
  out += "\n],\"otherData\":";
  out += other.dump();
  out += "}\n";
  return out;
}

}  // namespace

// ---- recording ----

void start(Communicator& comm, Options options) {
  Recorder& r = recorder();
  DAGR_ENFORCE(!enabled(), InputError, "timeline: already recording (start() twice without finish())");
  DAGR_ENFORCE(options.max_events > 0, InputError, "timeline: max_events must be at least 1");
  comm.barrier();
  std::lock_guard lock(r.mutex);
  r.events.clear();
  r.max_events = options.max_events;
  r.dropped = 0;
  r.pid = comm.rank();
  r.training_thread = std::this_thread::get_id();
  r.other_threads.clear();
  r.sync_ns = now_ns();
  detail::recording.store(true, std::memory_order_relaxed);
}

void finish(Communicator& comm, const std::string& path) {
  Recorder& r = recorder();
  DAGR_ENFORCE(enabled(), InputError, "timeline: finish() without start()");
  std::vector<std::uint8_t> mine;
  std::size_t max_events = 0;
  {
    std::unique_lock lock(r.mutex);
    // The watchers' last items are about buckets already complete: bounded.
    r.drained.wait_for(lock, std::chrono::seconds(10), [&] { return r.in_flight == 0; });
    detail::recording.store(false, std::memory_order_relaxed);
    mine = encode_part(r);
    max_events = r.max_events;
    r.events.clear();
    r.events.shrink_to_fit();
  }
  // Every part to rank 0: sizes first, then the bytes point to point.
  const std::int64_t size = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(comm.size()));
  comm.allgather(std::span<const std::int64_t>(&size, 1), std::span<std::int64_t>(sizes));
  if (comm.rank() != 0) {
    comm.send(std::span<const std::uint8_t>(mine), 0);
    return;
  }
  std::vector<Part> parts;
  parts.push_back(decode_part(mine));
  for (int peer = 1; peer < comm.size(); ++peer) {
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(sizes[static_cast<std::size_t>(peer)]));
    comm.recv(std::span<std::uint8_t>(bytes), peer);
    parts.push_back(decode_part(bytes));
  }
  const std::string text = merge(parts, max_events);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  DAGR_ENFORCE(f, Error, "timeline: cannot write ", tmp, ": ", std::strerror(errno));
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  DAGR_ENFORCE(written && closed, Error, "timeline: cannot write ", tmp, ": ", std::strerror(errno));
  std::filesystem::rename(tmp, path);
}

Span::~Span() {
  if (start_.time_since_epoch().count() != 0 && enabled()) span_here(name_, ns_of(start_), now_ns());
}

// ---- DDP's buckets ----

namespace {
// A stable pointer to `name` (kept until the process ends: a few distinct names).
const std::string* intern(const std::string& name) {
  Recorder& r = recorder();
  std::lock_guard lock(r.mutex);
  for (const std::string& g : r.names)
    if (g == name) return &g;
  return &r.names.emplace_back(name);
}
}  // namespace

// The background thread of one DdpTrace. Items come in the order DDP issues
// them: the buckets of a step, then its end. For a bucket still in flight it
// waits for the collective and notes when it saw it done; at the step's end
// it turns the step's buckets into spans:
//   end_k   = min(seen_k, seen_j for watched j > k, the step's end)
//             (the communication thread runs calls in issue order, so bucket
//             k was done when a later one was; the watcher may wake late),
//   start_k = max(issued_k, end_(k-1))
//             (it starts once issued and once the bucket before it is done),
//   and end_k at least start_k.
// A bucket whose first collective was complete when run() returned (a
// synchronous hook, which waits for the buckets before it) is issued and seen
// at the start and end of run(); it bounds no earlier bucket, since its first
// Work may be one that never went through the communication thread. A
// deferred bucket (its collectives run in the training thread's wait at the
// step's end) is issued when run() returns and ends with the step; buckets
// after it (DDP's tail-only bucket) ran before it, and are drawn after it, at
// the step's end. A step
// that never ends (its backward raised) is written as it stands when the next
// step's first bucket comes.
struct DdpTrace::Watcher {
  static constexpr std::int64_t kWithTheStep = std::numeric_limits<std::int64_t>::max();  // seen_ns: ends with the step
  struct Item {
    bool end_of_step = false;
    std::int64_t step = -1;
    int bucket = -1;
    std::size_t bytes = 0;
    const std::string* algorithm = nullptr;
    const std::string* group = nullptr;
    Work work;
    std::int64_t issued_ns = 0;
    std::int64_t seen_ns = -1;  // -1: still in flight; for end_of_step, the step's end
    bool watched = false;       // seen_ns is when the watcher saw a collective in flight complete
  };

  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Item> queue;
  bool stopping = false;
  std::vector<Item> open;  // the step being assembled (this thread only)
  std::thread thread{[this] { loop(); }};

  void push(Item item) {
    {
      std::lock_guard lock(recorder().mutex);
      ++recorder().in_flight;
    }
    {
      std::lock_guard lock(mutex);
      queue.push_back(std::move(item));
    }
    changed.notify_one();
  }

  ~Watcher() {
    {
      std::lock_guard lock(mutex);
      stopping = true;
    }
    changed.notify_one();
    thread.join();
  }

  void loop() {
    for (;;) {
      Item item;
      {
        std::unique_lock lock(mutex);
        while (queue.empty() && !stopping) changed.wait_for(lock, std::chrono::milliseconds(100));
        if (queue.empty()) return;
        item = std::move(queue.front());
        queue.pop_front();
      }
      handle(std::move(item));
      Recorder& r = recorder();
      std::lock_guard lock(r.mutex);
      if (--r.in_flight == 0) r.drained.notify_all();
    }
  }

  bool stop_requested() {
    std::lock_guard lock(mutex);
    return stopping;
  }

  void handle(Item item) {
    if (!open.empty() && open.front().step != item.step) flush(std::numeric_limits<std::int64_t>::max());
    if (item.end_of_step) {
      flush(item.seen_ns);
      return;
    }
    if (item.seen_ns < 0) {
      // Bounded polls, so that a DDP destroyed with a bucket in flight stops this thread.
      for (;;) {
        try {
          item.work.wait(std::chrono::milliseconds(100));
          break;
        } catch (const std::exception&) {
          if (item.work.completed() || stop_requested()) break;  // the call failed, or nobody waits for it any more
        }
      }
      item.seen_ns = now_ns();
      item.watched = true;
    }
    open.push_back(std::move(item));
  }

  void flush(std::int64_t step_end_ns) {
    std::vector<std::int64_t> end(open.size());
    std::int64_t bound = step_end_ns;
    for (std::size_t k = open.size(); k-- > 0;) {
      // A deferred bucket ran in the step's final wait, after any later bucket: no bound from them.
      end[k] = open[k].seen_ns == kWithTheStep ? step_end_ns : std::min(bound, open[k].seen_ns);
      if (open[k].watched) bound = end[k];
    }
    std::int64_t previous_end = std::numeric_limits<std::int64_t>::min();
    for (std::size_t k = 0; k < open.size(); ++k) {
      const Item& b = open[k];
      Event e;
      e.tid = kCommTid;
      e.algorithm = b.algorithm;
      e.group = b.group;
      e.step = b.step;
      e.bucket = b.bucket;
      e.bytes = static_cast<std::int64_t>(b.bytes);
      e.start_ns = std::max(b.issued_ns, previous_end);
      // A deferred bucket of a step that never ended: no end to give it.
      e.end_ns = std::max(e.start_ns, end[k] == kWithTheStep ? e.start_ns : end[k]);
      previous_end = e.end_ns;
      add(e);
    }
    open.clear();
  }
};

DdpTrace::DdpTrace() : group_(intern("")) {}
DdpTrace::~DdpTrace() = default;

void DdpTrace::join(Communicator& group) {
  std::int64_t pid;
  {
    std::lock_guard lock(recorder().mutex);
    pid = recorder().pid;
  }
  std::vector<std::int64_t> pids(static_cast<std::size_t>(group.size()));
  group.allgather(std::span<const std::int64_t>(&pid, 1), std::span<std::int64_t>(pids));
  std::string name;
  for (std::int64_t p : pids) name += (name.empty() ? "" : ",") + std::to_string(p);
  group_ = intern(name);
}

void DdpTrace::started(std::int64_t step, int bucket, std::size_t bytes, const std::string& algorithm,
                       Clock::time_point since, Work work, bool deferred) {
  const std::int64_t returned = now_ns();
  span_here("comm hook run", ns_of(since), returned);
  if (!watcher_) watcher_ = std::make_unique<Watcher>();
  Watcher::Item item;
  item.step = step;
  item.bucket = bucket;
  item.bytes = bytes;
  item.algorithm = intern(algorithm);
  item.group = group_;
  const bool done = !deferred && work.completed();
  item.issued_ns = done ? ns_of(since) : returned;
  item.seen_ns = deferred ? Watcher::kWithTheStep : done ? returned : -1;
  item.work = std::move(work);
  watcher_->push(std::move(item));
}

void DdpTrace::end_step(std::int64_t step, Clock::time_point since) {
  const std::int64_t end = now_ns();
  span_here("wait for communication", ns_of(since), end);
  if (!watcher_) return;
  Watcher::Item item;
  item.end_of_step = true;
  item.step = step;
  item.seen_ns = end;
  watcher_->push(std::move(item));
}

}  // namespace dagr::timeline
