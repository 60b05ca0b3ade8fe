#include "dagr/parallel/pipeline_schedule.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <map>
#include <sstream>
#include <tuple>

#include "dagr/error.h"

namespace dagr {

const char* name(ActionKind kind) {
  switch (kind) {
    case ActionKind::forward: return "F";
    case ActionKind::backward: return "B";
    case ActionKind::send_activation: return "send_act";
    case ActionKind::recv_activation: return "recv_act";
    case ActionKind::send_gradient: return "send_grad";
    case ActionKind::recv_gradient: return "recv_grad";
  }
  return "?";
}

const char* name(ScheduleKind kind) { return kind == ScheduleKind::gpipe ? "gpipe" : "1f1b"; }

ScheduleKind parse_schedule_kind(const std::string& text) {
  if (text == "gpipe") return ScheduleKind::gpipe;
  if (text == "1f1b") return ScheduleKind::one_f_one_b;
  throw InputError(detail::concat("unknown pipeline schedule '", text, "' (gpipe, 1f1b)"));
}

namespace {

// A forward or backward of micro-batch i on stage s with the transfers around it.
void add_forward(std::vector<Action>& out, int s, int stages, int i) {
  if (s > 0) out.push_back({ActionKind::recv_activation, i});
  out.push_back({ActionKind::forward, i});
  if (s < stages - 1) out.push_back({ActionKind::send_activation, i});
}

void add_backward(std::vector<Action>& out, int s, int stages, int i) {
  if (s < stages - 1) out.push_back({ActionKind::recv_gradient, i});
  out.push_back({ActionKind::backward, i});
  if (s > 0) out.push_back({ActionKind::send_gradient, i});
}

}  // namespace

PipelineSchedule make_schedule(ScheduleKind kind, int stages, int micro_batches) {
  DAGR_ENFORCE(stages >= 1, InputError, "a pipeline needs at least 1 stage, not ", stages);
  DAGR_ENFORCE(micro_batches >= 1, InputError, "a pipeline needs at least 1 micro-batch, not ", micro_batches);
  PipelineSchedule plan{kind, stages, micro_batches, std::vector<std::vector<Action>>(static_cast<std::size_t>(stages))};
  for (int s = 0; s < stages; ++s) {
    auto& out = plan.ranks[static_cast<std::size_t>(s)];
    if (kind == ScheduleKind::gpipe) {
      for (int i = 0; i < micro_batches; ++i) add_forward(out, s, stages, i);
      for (int i = 0; i < micro_batches; ++i) add_backward(out, s, stages, i);
      continue;
    }
    // 1F1B: warm up so that the last stage's first forward can start, then one
    // forward and one backward in turn, then the backwards still owed.
    const int warmup = std::min(stages - s - 1, micro_batches);
    int next_forward = 0, next_backward = 0;
    for (; next_forward < warmup; ++next_forward) add_forward(out, s, stages, next_forward);
    for (; next_forward < micro_batches; ++next_forward, ++next_backward) {
      add_forward(out, s, stages, next_forward);
      add_backward(out, s, stages, next_backward);
    }
    for (; next_backward < micro_batches; ++next_backward) add_backward(out, s, stages, next_backward);
  }
  return plan;
}

// The simulator: each rank has a clock and a position in its list. Rounds over
// the ranks run every action that can run now; a receive can run once its
// channel holds a message (its clock then jumps to the message's send time if
// that is later). When a round moves no rank and some are unfinished, the
// schedule deadlocks. Besides timing, it checks the data each action needs:
// a forward on stage s > 0 needs its received activation, a backward needs
// its forward (and, before the last stage, its received gradient), a send
// needs what it sends.
SimulationReport simulate(const PipelineSchedule& plan, StageCosts costs) {
  const int P = plan.stages, M = plan.micro_batches;
  DAGR_ENFORCE(static_cast<int>(plan.ranks.size()) == P, Error, "schedule: ", plan.ranks.size(), " action lists for ",
               P, " stages");
  DAGR_ENFORCE(costs.forward >= 1 && costs.backward >= 1, InputError, "stage costs must be at least 1 tick");
  struct Message {
    int micro_batch, time;
  };
  // (from, to, is_gradient) -> messages in flight, in send order
  std::map<std::tuple<int, int, bool>, std::deque<Message>> channels;
  enum Done { received_activation = 1, forwarded = 2, received_gradient = 4, backwarded = 8 };
  std::vector<std::vector<int>> done(static_cast<std::size_t>(P), std::vector<int>(static_cast<std::size_t>(M), 0));
  std::vector<int> clock(static_cast<std::size_t>(P), 0), pc(static_cast<std::size_t>(P), 0), in_flight(clock);
  SimulationReport report;
  report.costs = costs;
  report.peak_in_flight.assign(static_cast<std::size_t>(P), 0);
  report.slots.resize(static_cast<std::size_t>(P));
  long busy = 0;

  // Runs rank s's next action if it can run now; false when it must wait.
  auto step = [&](int s) -> bool {
    const Action a = plan.ranks[static_cast<std::size_t>(s)][static_cast<std::size_t>(pc[static_cast<std::size_t>(s)])];
    const int i = a.micro_batch;
    DAGR_ENFORCE(i >= 0 && i < M, Error, "schedule: rank ", s, " names micro-batch ", i, " of ", M);
    int& state = done[static_cast<std::size_t>(s)][static_cast<std::size_t>(i)];
    int& t = clock[static_cast<std::size_t>(s)];
    auto fail = [&](const char* why) {
      throw Error(detail::concat("schedule: rank ", s, "'s ", name(a.kind), " ", i, " ", why));
    };
    auto receive = [&](int from, bool gradient, int flag) {
      DAGR_ENFORCE(from >= 0 && from < P, Error, "schedule: rank ", s, "'s ", name(a.kind), " ", i,
                   " has no neighbour to receive from");
      auto& queue = channels[{from, s, gradient}];
      if (queue.empty()) return false;
      if (queue.front().micro_batch != i)
        fail(detail::concat("meets micro-batch ", queue.front().micro_batch, " first on its channel").c_str());
      t = std::max(t, queue.front().time);
      queue.pop_front();
      state |= flag;
      return true;
    };
    auto send = [&](int to, bool gradient, int needs) {
      if (to < 0 || to >= P) fail("has no neighbour to send to");
      if (!(state & needs)) fail("sends what it has not computed");
      channels[{s, to, gradient}].push_back({i, t});
    };
    auto compute = [&](int cost, int flag) {
      report.slots[static_cast<std::size_t>(s)].push_back({a.kind, i, t, t + cost});
      t += cost;
      busy += cost;
      state |= flag;
    };
    switch (a.kind) {
      case ActionKind::recv_activation: return receive(s - 1, false, received_activation);
      case ActionKind::recv_gradient: return receive(s + 1, true, received_gradient);
      case ActionKind::send_activation: send(s + 1, false, forwarded); return true;
      case ActionKind::send_gradient: send(s - 1, true, backwarded); return true;
      case ActionKind::forward:
        if (state & forwarded) fail("runs twice");
        if (s > 0 && !(state & received_activation)) fail("comes before its activation is received");
        compute(costs.forward, forwarded);
        ++in_flight[static_cast<std::size_t>(s)];
        report.peak_in_flight[static_cast<std::size_t>(s)] =
            std::max(report.peak_in_flight[static_cast<std::size_t>(s)], in_flight[static_cast<std::size_t>(s)]);
        return true;
      case ActionKind::backward:
        if (state & backwarded) fail("runs twice");
        if (!(state & forwarded)) fail("comes before its forward");
        if (s < P - 1 && !(state & received_gradient)) fail("comes before its gradient is received");
        compute(costs.backward, backwarded);
        --in_flight[static_cast<std::size_t>(s)];
        return true;
    }
    return false;
  };

  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < P; ++s)
      while (pc[static_cast<std::size_t>(s)] < static_cast<int>(plan.ranks[static_cast<std::size_t>(s)].size()) &&
             step(s)) {
        ++pc[static_cast<std::size_t>(s)];
        moved = true;
      }
  }
  std::ostringstream stuck;
  for (int s = 0; s < P; ++s) {
    const auto& list = plan.ranks[static_cast<std::size_t>(s)];
    if (pc[static_cast<std::size_t>(s)] < static_cast<int>(list.size())) {
      const Action a = list[static_cast<std::size_t>(pc[static_cast<std::size_t>(s)])];
      stuck << " rank " << s << " at " << name(a.kind) << " " << a.micro_batch << ";";
    }
  }
  DAGR_ENFORCE(stuck.str().empty(), Error, "schedule deadlocks: nothing can run, with", stuck.str());
  for (const auto& [key, queue] : channels)
    DAGR_ENFORCE(queue.empty(), Error, "schedule: rank ", std::get<0>(key), " sends micro-batch ",
                 queue.front().micro_batch, "'s ", std::get<2>(key) ? "gradient" : "activation", " to rank ",
                 std::get<1>(key), ", which never receives it");
  for (int s = 0; s < P; ++s)
    for (int i = 0; i < M; ++i)
      DAGR_ENFORCE(done[static_cast<std::size_t>(s)][static_cast<std::size_t>(i)] & backwarded, Error,
                   "schedule: rank ", s, " never runs the backward of micro-batch ", i);
  report.ticks = *std::max_element(clock.begin(), clock.end());
  report.bubble_fraction = 1.0 - static_cast<double>(busy) / (static_cast<double>(P) * report.ticks);
  report.max_peak_in_flight = *std::max_element(report.peak_in_flight.begin(), report.peak_in_flight.end());
  return report;
}

std::string describe(const PipelineSchedule& plan) {
  std::ostringstream out;
  out << name(plan.kind) << " schedule, " << plan.stages << " stages, " << plan.micro_batches << " micro-batches\n";
  for (int s = 0; s < plan.stages; ++s) {
    out << "rank " << s << ":";
    const auto& list = plan.ranks[static_cast<std::size_t>(s)];
    for (std::size_t k = 0; k < list.size(); ++k) {
      const bool compute = list[k].kind == ActionKind::forward || list[k].kind == ActionKind::backward;
      out << (k ? ", " : " ") << name(list[k].kind) << (compute ? "" : " ") << list[k].micro_batch;
    }
    out << '\n';
  }
  return out.str();
}

std::string picture(const PipelineSchedule& plan, const SimulationReport& report) {
  const int width = static_cast<int>(std::to_string(std::max(plan.micro_batches - 1, 0)).size()) + 2;
  std::ostringstream out;
  out << "tick    ";
  for (int t = 0; t < report.ticks; ++t) {
    std::string label = t % 5 == 0 ? std::to_string(t) : "";
    out << label << std::string(static_cast<std::size_t>(std::max(width - static_cast<int>(label.size()), 1)), ' ');
  }
  out << '\n';
  for (int s = 0; s < plan.stages; ++s) {
    std::vector<std::string> cells(static_cast<std::size_t>(report.ticks), ".");
    for (const Slot& slot : report.slots[static_cast<std::size_t>(s)])
      for (int t = slot.start; t < slot.end; ++t)
        cells[static_cast<std::size_t>(t)] = name(slot.kind) + std::to_string(slot.micro_batch);
    out << "rank " << s << "  ";
    for (const auto& c : cells) out << c << std::string(static_cast<std::size_t>(width - static_cast<int>(c.size())), ' ');
    out << '\n';
  }
  char line[200];
  std::snprintf(line, sizeof line,
                "(forward %d tick%s, backward %d) %d ticks, bubble %.1f %% (GPipe's (P-1)/(M+P-1) = %.1f %%), "
                "peak in-flight micro-batches %d\n",
                report.costs.forward, report.costs.forward == 1 ? "" : "s", report.costs.backward, report.ticks,
                100 * report.bubble_fraction,
                100.0 * (plan.stages - 1) / (plan.micro_batches + plan.stages - 1), report.max_peak_in_flight);
  out << line;
  return out.str();
}

}  // namespace dagr
