// Pipeline schedules as explicit per-rank action lists, and a simulator that
// checks them before a run.
//
// A step of pipeline-parallel training cuts the batch into M micro-batches
// that flow through P stages (one stage per rank of the pipeline group).
// Stage s runs, for each micro-batch i:
//   forward:  [recv_activation i from s-1]  forward i  [send_activation i to s+1]
//   backward: [recv_gradient i from s+1]    backward i [send_gradient i to s-1]
// (the bracketed transfers are absent on the first / last stage). A schedule
// is the order in which each rank runs these actions:
//
//   GPipe  every forward, then every backward: M micro-batches in flight.
//   1F1B   (PipeDream-Flush) stage s runs min(P-s-1, M) warm-up forwards,
//          then alternates one forward and one backward, then drains the
//          remaining backwards: at most P-s micro-batches in flight.
//
// Both have the bubble (P-1)/(M+P-1) when every stage takes the same time.
// Micro-batches go forward and backward in the order 0..M-1 on every stage,
// so the messages between two neighbours arrive in the order they are
// received (dagr's point-to-point channels are FIFO and check the tag).
//
//   auto plan = dagr::make_schedule(dagr::ScheduleKind::one_f_one_b, 4, 8);
//   auto report = dagr::simulate(plan);            // throws on a deadlock
//   std::cout << dagr::describe(plan) << dagr::picture(plan, report);
#pragma once

#include <string>
#include <vector>

namespace dagr {

enum class ActionKind { forward, backward, send_activation, recv_activation, send_gradient, recv_gradient };
const char* name(ActionKind kind);

struct Action {
  ActionKind kind;
  int micro_batch;
  bool operator==(const Action&) const = default;
};

enum class ScheduleKind { gpipe, one_f_one_b };
const char* name(ScheduleKind kind);             // "gpipe", "1f1b"
ScheduleKind parse_schedule_kind(const std::string& text);  // InputError for anything else

struct PipelineSchedule {
  ScheduleKind kind;
  int stages = 1, micro_batches = 1;
  std::vector<std::vector<Action>> ranks;  // ranks[s]: what stage s does, in order
};

// InputError unless stages ≥ 1 and micro_batches ≥ 1.
PipelineSchedule make_schedule(ScheduleKind kind, int stages, int micro_batches);

// Message tags: one per (micro-batch, direction), so a receive that meets the
// wrong message fails at once instead of mixing up micro-batches.
inline int activation_tag(int micro_batch) { return 2 * micro_batch; }
inline int gradient_tag(int micro_batch) { return 2 * micro_batch + 1; }

// What one forward / backward of a micro-batch costs each stage, in ticks.
struct StageCosts {
  int forward = 1, backward = 2;
};

// A compute action placed on the timeline by the simulator.
struct Slot {
  ActionKind kind;  // forward or backward
  int micro_batch;
  int start, end;  // ticks [start, end)
};

struct SimulationReport {
  StageCosts costs;
  int ticks = 0;                          // makespan of the step
  double bubble_fraction = 0;             // idle rank-ticks / (P · ticks)
  std::vector<int> peak_in_flight;        // per rank: forwards whose backward has not run yet, at most
  int max_peak_in_flight = 0;
  std::vector<std::vector<Slot>> slots;   // per rank, in order
};

// Runs the action lists as P ranks would: compute actions take their cost,
// sends never block (the executor sends asynchronously), a receive waits for
// its message. Throws Error when the lists do not fit together: a receive
// whose message is never sent (deadlock, naming the stuck ranks), a channel
// that delivers another micro-batch's message first, a send that nobody
// receives, a backward before its forward, or a micro-batch missing.
SimulationReport simulate(const PipelineSchedule& schedule, StageCosts costs = {});

// The action lists, one line per rank: "rank 1: recv_act 0, F0, send_act 0, ...".
std::string describe(const PipelineSchedule& schedule);
// Tick by tick, which rank does what ("F3" forward of micro-batch 3, "B3"
// its backward, "." idle), then the bubble and peak in-flight figures.
std::string picture(const PipelineSchedule& schedule, const SimulationReport& report);

}  // namespace dagr
