// dagr::ParameterServer and dagr::ParameterClient — a parameter-server mode
// (as ps-lite / BytePS): S server ranks hold equal shards of the model's flat
// parameters and of the optimizer state; W worker ranks compute gradients,
// push them (to each server its shard) and pull fresh parameters.
//
//   dagr::PsLinks links = dagr::make_ps_links(world, /*servers=*/1);   // collective
//   auto shards = dagr::ps_shards(n_params, links.servers);
//   if (links.server) {
//     dagr::ParameterServer server(links.peers, flat.slice(0, b, e).clone(), make_sgd, {.staleness = 2});
//     server.serve();                        // until every worker is done or lost
//   } else {
//     dagr::ParameterClient client(links.peers, shards);
//     client.pull(flat);                     // the servers' parameters
//     for (...) { ...backward...; client.push_pull(flat_grad, report, flat); }
//     client.finish(report);
//   }
//
// Links. World ranks 0..S-1 serve, S..size-1 work. Every (server, worker)
// pair gets a communicator of its own (Communicator::split, one round per
// pair), so that
//   - a server serves whichever worker comes first: one thread per worker,
//     each blocked in recv on its own pair. The communicator has no
//     any-source receive nor a probe, and one communicator's async receives
//     run one at a time in issue order, so receives on one shared group
//     would be served in a fixed order; separate groups progress
//     independently (each has its own queues and shared memory);
//   - a worker that dies or leaves breaks only its own pairs: the server sees
//     a PeerError on that pair (at once for a dead process, after the
//     timeout for a silent one) and drops the worker, the other pairs are
//     untouched. No shrink is needed (Communicator::shrink rebuilds a whole
//     group; here nothing is shared with the lost worker).
// The servers also get a group of their own (for gathering the dense model).
//
// Updates. Synchronous (staleness < 0): the server waits for one push from
// every worker, sums them in worker order, divides by W, takes one optimizer
// step and answers every worker with the new parameters — DDP's arithmetic
// (average, then the same optimizer on the same elements). A lost worker is
// then an error (serve() throws).
// Asynchronous with bound K ≥ 0: the server applies each push as it comes
// (an optimizer step with that push's gradient alone) and records its
// staleness: the updates applied between the worker's pull and its push. A
// pull is granted only when, counting every worker still computing on its
// pull as one more update to come, no worker's staleness can exceed K:
//   |O| ≤ K and version + |O| − min_{u ∈ O} read(u) ≤ K,
// where O are the other workers computing and version the server's update
// count. An applied push lowers |O| by one as it raises version by one, so
// the bound that held at each grant holds until that worker's push: a
// worker never computes on parameters more than K updates old. A fast
// worker's pull is held back (its reply waits) while a slow worker would
// otherwise fall more than K behind; K = 0 serialises the workers. With
// several servers each one holds back by its own count (every server gets
// every push, so each bounds the staleness of its own shard); a worker
// pushes to all servers first and then pulls from them one after the other
// in server order, which keeps their independent hold-backs from waiting on
// each other in a cycle.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dagr/comm/communicator.h"

namespace dagr {

// A contiguous range [begin, end) of the flat parameters.
struct PsShard {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
};

// n elements in `servers` contiguous ranges whose sizes differ by at most one.
std::vector<PsShard> ps_shards(std::int64_t n, int servers);

// This rank's side of a parameter-server job.
struct PsLinks {
  bool server = false;
  int index = 0;     // among the servers (world rank) or among the workers (world rank − S)
  int servers = 0, workers = 0;
  // Server: one communicator per worker, in worker order; worker: one per
  // server, in server order. Each is a group of two: rank 0 the server, rank 1 the worker.
  std::vector<Communicator> peers;
  std::optional<Communicator> server_group;  // servers only: the S servers, in server order
};

// Collective over `world`: S·W + 1 splits. InputError unless 1 ≤ servers < world.size().
PsLinks make_ps_links(Communicator& world, int servers);

// What a worker tells the servers with each push (server 0 turns it into the job's figures).
struct PsReport {
  std::int64_t epoch = 0;  // the epoch of this push's batch
  std::int64_t step = 0;   // the worker's own step count, 1 for its first push
  double loss_sum = 0, correct = 0, samples = 0;  // of this push's batch
  std::int64_t staleness = -1;      // of the worker's previous push (max over the servers); -1: none yet
  std::int64_t evaluated_epoch = 0;  // > 0: the test figures below are of the parameters at that epoch's end
  double test_correct = 0, test_samples = 0;
};

struct PsServerOptions {
  int staleness = -1;  // < 0: synchronous; K ≥ 0: asynchronous, no worker more than K updates behind
  // Before each optimizer step, with the update's number (0, 1, …), e.g. to set the learning rate.
  std::function<void(torch::optim::Optimizer&, std::int64_t update)> before_update;
  // Each message's report (pushes and the final one), and each worker lost;
  // called with the server's lock held, in the order the server took them.
  std::function<void(int worker, const PsReport&)> on_report;
  std::function<void(int worker, const std::string& why)> on_lost;
};

struct PsServerStats {
  std::int64_t updates = 0;          // optimizer steps taken
  std::int64_t pushes = 0;           // gradients received
  std::int64_t max_staleness = 0;    // over the pushes applied
  std::int64_t held_back = 0;        // pulls that waited for the staleness bound
  std::vector<int> lost;             // workers dropped, in the order they were lost
};

class ParameterServer {
 public:
  using OptimizerFactory =
      std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor> parameters)>;
  // `workers`: PsLinks::peers of a server. `shard`: this server's slice of the
  // flat float32 parameters (its initial values; the server keeps it).
  ParameterServer(std::vector<Communicator> workers, torch::Tensor shard, const OptimizerFactory& make_optimizer,
                  PsServerOptions options);
  ~ParameterServer();
  ParameterServer(const ParameterServer&) = delete;
  ParameterServer& operator=(const ParameterServer&) = delete;

  // Serves until every worker has finished or (asynchronous) been lost.
  // Throws the first error that is not a lost worker in asynchronous mode;
  // each wait is bounded by the pair communicators' timeout.
  void serve();

  torch::Tensor shard() const { return shard_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  PsServerStats stats() const;

 private:
  struct Peer;
  void serve_worker(int w);
  bool may_grant(int w) const;  // with mutex_ held
  void apply(const torch::Tensor& gradient);
  void lose(int w, const std::string& why);  // with mutex_ held

  std::vector<std::unique_ptr<Peer>> peers_;
  torch::Tensor shard_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  PsServerOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::int64_t version_ = 0;  // updates applied
  int arrived_ = 0;           // synchronous: pushes of the current step in hand
  PsServerStats stats_;
  std::string failure_;       // the first fatal error (serve() rethrows it)
};

class ParameterClient {
 public:
  // `servers`: PsLinks::peers of a worker; `shards`: ps_shards(n, S).
  ParameterClient(std::vector<Communicator> servers, std::vector<PsShard> shards);
  ParameterClient(const ParameterClient&) = delete;
  ParameterClient& operator=(const ParameterClient&) = delete;

  // The first pull: fills the flat float32 `parameters` once every server grants it.
  void pull(torch::Tensor parameters);
  // Sends each server its slice of `gradient` with `report`, then fills
  // `parameters` with what the servers grant next. Returns the push's
  // staleness (max over the servers; 0 in synchronous mode).
  std::int64_t push_pull(const torch::Tensor& gradient, const PsReport& report, torch::Tensor parameters);
  // No more pushes; `report` may carry the last epoch's test figures.
  void finish(const PsReport& report);

 private:
  void send_header(int s, double kind, const PsReport& report);
  std::int64_t pull_in_order(torch::Tensor& parameters);

  std::vector<Communicator> servers_;
  std::vector<PsShard> shards_;
};

}  // namespace dagr
