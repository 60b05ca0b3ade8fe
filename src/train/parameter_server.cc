// The parameter server's protocol (dagr/train/parameter_server.h has the design).
//
// On each (server, worker) pair, in order:
//   worker → server  header: kHeader doubles (kind, then the PsReport)
//                    kind push: then the gradient's slice (float32, the shard's size)
//   server → worker  to a pull, once granted: {version, staleness of the
//                    worker's last push (−1: none)}, then the shard's
//                    parameters (float32)
// A step is a push to every server, then a pull from each in server order
// (ParameterClient::pull_in_order); kind done ends the pair's thread on the server.
// Tags tell the three messages apart, so a protocol slip is a MismatchError.
#include "dagr/train/parameter_server.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <condition_variable>
#include <thread>

#include "dagr/error.h"

namespace dagr {
namespace {

constexpr int kHeader = 10;
enum Kind { kPull = 1, kPush = 2, kDone = 3 };
enum Tag { kTagHeader = 1, kTagGradient = 2, kTagReply = 3, kTagParameters = 4 };
constexpr int kServerRank = 0, kWorkerRank = 1;  // in each pair's group

using Header = std::array<double, kHeader>;

Header encode(Kind kind, const PsReport& r) {
  return {static_cast<double>(kind), static_cast<double>(r.epoch), static_cast<double>(r.step), r.loss_sum,
          r.correct, r.samples, static_cast<double>(r.staleness), static_cast<double>(r.evaluated_epoch),
          r.test_correct, r.test_samples};
}

PsReport decode(const Header& h) {
  PsReport r;
  r.epoch = static_cast<std::int64_t>(h[1]);
  r.step = static_cast<std::int64_t>(h[2]);
  r.loss_sum = h[3];
  r.correct = h[4];
  r.samples = h[5];
  r.staleness = static_cast<std::int64_t>(h[6]);
  r.evaluated_epoch = static_cast<std::int64_t>(h[7]);
  r.test_correct = h[8];
  r.test_samples = h[9];
  return r;
}

float* float_data(const torch::Tensor& t) { return static_cast<float*>(t.data_ptr()); }

void check_flat(const torch::Tensor& t, std::int64_t n, const char* what) {
  DAGR_ENFORCE(t.defined() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.dim() == 1 &&
                   t.numel() == n,
               InputError, "parameter server: ", what, " must be a contiguous 1-d float32 tensor of ", n,
               " elements");
}

}  // namespace

std::vector<PsShard> ps_shards(std::int64_t n, int servers) {
  DAGR_ENFORCE(servers >= 1 && n >= servers, InputError, "cannot split ", n, " parameters over ", servers,
               " servers");
  std::vector<PsShard> shards;
  for (int s = 0; s < servers; ++s)
    shards.push_back({n * s / servers, n * (s + 1) / servers});
  return shards;
}

PsLinks make_ps_links(Communicator& world, int servers) {
  const int size = world.size(), rank = world.rank();
  DAGR_ENFORCE(servers >= 1 && servers < size, InputError, "--servers ", servers,
               " must be at least 1 and below the world size ", size, " (the other ranks are the workers)");
  PsLinks links;
  links.servers = servers;
  links.workers = size - servers;
  links.server = rank < servers;
  links.index = links.server ? rank : rank - servers;
  // One split per pair: only that pair takes part (colour 0), the server first.
  for (int s = 0; s < servers; ++s)
    for (int w = 0; w < links.workers; ++w) {
      const bool member = rank == s || rank == servers + w;
      auto pair = world.split(member ? 0 : -1, rank == s ? 0 : 1);
      if (member) links.peers.push_back(std::move(*pair));
    }
  auto group = world.split(links.server ? 0 : -1, rank);
  if (links.server) links.server_group = std::move(*group);
  return links;
}

// ---- server ----

struct ParameterServer::Peer {
  explicit Peer(Communicator c) : comm(std::move(c)) {}
  Communicator comm;
  enum class State { active, finished, lost } state = State::active;
  bool computing = false;   // granted a pull, no push yet
  std::int64_t read = 0;    // the version it was granted
  bool pushed = false;      // synchronous: its gradient of the current step is in `slot`
  std::vector<float> slot;  // synchronous only
  std::int64_t staleness = -1;  // of its last push, for the reply to its next pull
};

ParameterServer::ParameterServer(std::vector<Communicator> workers, torch::Tensor shard,
                                 const OptimizerFactory& make_optimizer, PsServerOptions options)
    : options_(std::move(options)) {
  DAGR_ENFORCE(!workers.empty(), InputError, "parameter server: no workers");
  check_flat(shard, shard.numel(), "the shard");
  for (auto& c : workers) {
    DAGR_ENFORCE(c.size() == 2 && c.rank() == kServerRank, InputError,
                 "parameter server: each worker link must be a pair group with the server as rank 0");
    peers_.push_back(std::make_unique<Peer>(std::move(c)));
  }
  shard_ = shard.detach().requires_grad_(true);
  optimizer_ = make_optimizer({shard_});
}

ParameterServer::~ParameterServer() = default;

PsServerStats ParameterServer::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void ParameterServer::apply(const torch::Tensor& gradient) {
  if (options_.before_update) options_.before_update(*optimizer_, version_);
  shard_.mutable_grad() = gradient;
  optimizer_->step();
  ++version_;
  ++stats_.updates;
}

bool ParameterServer::may_grant(int w) const {
  if (options_.staleness < 0) {  // synchronous: once the step this worker pushed to is applied
    const Peer& p = *peers_[static_cast<std::size_t>(w)];
    return !p.pushed;
  }
  std::int64_t others = 0, oldest = version_;
  for (std::size_t u = 0; u < peers_.size(); ++u)
    if (static_cast<int>(u) != w && peers_[u]->computing) {
      ++others;
      oldest = std::min(oldest, peers_[u]->read);
    }
  return others <= options_.staleness && version_ + others - oldest <= options_.staleness;
}

void ParameterServer::lose(int w, const std::string& why) {
  Peer& p = *peers_[static_cast<std::size_t>(w)];
  p.state = Peer::State::lost;
  p.computing = false;
  stats_.lost.push_back(w);
  if (options_.staleness < 0) {
    if (failure_.empty())
      failure_ = detail::concat("synchronous parameter server: lost worker ", w, " (", why,
                                "); only asynchronous mode (--staleness) carries on without it");
  } else if (options_.on_lost) {
    options_.on_lost(w, why);
  }
  changed_.notify_all();
}

void ParameterServer::serve_worker(int w) {
  Peer& p = *peers_[static_cast<std::size_t>(w)];
  Communicator& c = p.comm;
  const bool async = options_.staleness >= 0;
  const std::int64_t n = shard_.numel();
  std::vector<float> gradient(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n));
  try {
    for (;;) {
      Header h{};
      c.recv(std::span<double>(h), kWorkerRank, kTagHeader);
      const int kind = static_cast<int>(h[0]);
      DAGR_ENFORCE(kind == kPull || kind == kPush || kind == kDone, Error, "parameter server: worker ", w,
                   " sent message kind ", h[0]);
      if (kind == kPush) c.recv(std::span<float>(gradient), kWorkerRank, kTagGradient);

      std::unique_lock lock(mutex_);
      if (!failure_.empty()) return;
      if (options_.on_report && kind != kPull) options_.on_report(w, decode(h));
      DAGR_ENFORCE(kind != kPull || !p.computing, Error, "parameter server: worker ", w, " pulled twice");
      DAGR_ENFORCE(kind != kPush || p.computing, Error, "parameter server: worker ", w, " pushed without a pull");
      if (kind == kPush) {
        ++stats_.pushes;
        p.computing = false;
        if (async) {
          p.staleness = version_ - p.read;
          stats_.max_staleness = std::max(stats_.max_staleness, p.staleness);
          apply(torch::from_blob(gradient.data(), {n}, torch::kFloat32));
        } else {
          p.staleness = 0;
          p.slot.assign(gradient.begin(), gradient.end());
          p.pushed = true;
          ++arrived_;
        }
      } else if (kind == kDone) {
        p.state = Peer::State::finished;
        p.computing = false;
      }
      // Synchronous: the step is complete once every worker still active has
      // pushed; the sum runs in worker order, then one division (as ReduceOp::avg).
      if (!async && arrived_ > 0 &&
          std::all_of(peers_.begin(), peers_.end(),
                      [](const auto& q) { return q->state != Peer::State::active || q->pushed; })) {
        torch::Tensor sum = torch::zeros({n}, torch::kFloat32);
        float* acc = float_data(sum);
        bool first = true;
        for (auto& q : peers_) {
          if (!q->pushed) continue;
          for (std::int64_t i = 0; i < n; ++i) acc[i] = first ? q->slot[i] : acc[i] + q->slot[i];
          first = false;
          q->pushed = false;
        }
        const auto count = static_cast<float>(arrived_);
        for (std::int64_t i = 0; i < n; ++i) acc[i] = acc[i] / count;
        arrived_ = 0;
        apply(sum);
      }
      changed_.notify_all();
      if (kind == kDone) return;
      if (kind == kPush) continue;  // the pull follows (see ParameterClient::push_pull)

      // Grant the next pull once the bound allows (synchronous: once the step is applied).
      const auto deadline = std::chrono::steady_clock::now() + 2 * c.timeout();
      bool held = false;
      while (failure_.empty() && !may_grant(w)) {
        held = true;
        if (changed_.wait_until(lock, deadline) == std::cv_status::timeout && failure_.empty() && !may_grant(w))
          throw Error(detail::concat("parameter server: worker ", w, "'s pull waited ",
                                     2 * c.timeout().count(), " ms for ",
                                     async ? "the staleness bound" : "the other workers' pushes",
                                     "; no other worker pushed or was dropped in that time"));
      }
      if (!failure_.empty()) return;
      if (held && async) ++stats_.held_back;
      p.read = version_;
      p.computing = true;
      std::memcpy(out.data(), float_data(shard_), static_cast<std::size_t>(n) * sizeof(float));
      const std::array<double, 2> reply{static_cast<double>(version_), static_cast<double>(p.staleness)};
      p.staleness = -1;
      lock.unlock();
      c.send(std::span<const double>(reply), kWorkerRank, kTagReply);
      c.send(std::span<const float>(out), kWorkerRank, kTagParameters);
    }
  } catch (const std::exception& e) {
    const bool link_failed = dynamic_cast<const PeerError*>(&e) || dynamic_cast<const TimeoutError*>(&e);
    std::lock_guard lock(mutex_);
    if (link_failed && p.state == Peer::State::active) {
      lose(w, e.what());
      return;
    }
    if (failure_.empty()) failure_ = e.what();
    changed_.notify_all();
  }
}

void ParameterServer::serve() {
  std::vector<std::thread> threads;
  for (int w = 0; w < static_cast<int>(peers_.size()); ++w) threads.emplace_back([this, w] { serve_worker(w); });
  for (auto& t : threads) t.join();
  std::lock_guard lock(mutex_);
  if (!failure_.empty()) throw Error(failure_);
}

// ---- worker ----

ParameterClient::ParameterClient(std::vector<Communicator> servers, std::vector<PsShard> shards)
    : servers_(std::move(servers)), shards_(std::move(shards)) {
  DAGR_ENFORCE(!servers_.empty() && servers_.size() == shards_.size(), InputError, "parameter client: ",
               servers_.size(), " server links for ", shards_.size(), " shards");
  for (const auto& c : servers_)
    DAGR_ENFORCE(c.size() == 2 && c.rank() == kWorkerRank, InputError,
                 "parameter client: each server link must be a pair group with the worker as rank 1");
}

void ParameterClient::send_header(int s, double kind, const PsReport& report) {
  const Header h = encode(static_cast<Kind>(kind), report);
  servers_[static_cast<std::size_t>(s)].send(std::span<const double>(h), kServerRank, kTagHeader);
}

// Pulls from the servers one after the other, in server order: a pull is
// sent to server s only once server s − 1 granted its own. With the pushes
// all sent first, this ordered acquisition keeps servers that hold back
// pulls independently from deadlocking: a worker held at server m is granted
// everywhere below m and computing nowhere from m on, so the worker held at
// the highest server waits for one that is really computing.
std::int64_t ParameterClient::pull_in_order(torch::Tensor& parameters) {
  std::int64_t staleness = -1;
  for (std::size_t s = 0; s < servers_.size(); ++s) {
    send_header(static_cast<int>(s), kPull, {});
    std::array<double, 2> reply{};
    servers_[s].recv(std::span<double>(reply), kServerRank, kTagReply);
    staleness = std::max(staleness, static_cast<std::int64_t>(reply[1]));
    servers_[s].recv(std::span<float>(float_data(parameters) + shards_[s].begin,
                                      static_cast<std::size_t>(shards_[s].size())),
                     kServerRank, kTagParameters);
  }
  return staleness;
}

void ParameterClient::pull(torch::Tensor parameters) {
  check_flat(parameters, shards_.back().end, "the parameters");
  pull_in_order(parameters);
}

std::int64_t ParameterClient::push_pull(const torch::Tensor& gradient, const PsReport& report,
                                        torch::Tensor parameters) {
  check_flat(gradient, shards_.back().end, "the gradient");
  check_flat(parameters, shards_.back().end, "the parameters");
  for (std::size_t s = 0; s < servers_.size(); ++s) {
    send_header(static_cast<int>(s), kPush, report);
    servers_[s].send(std::span<const float>(float_data(gradient) + shards_[s].begin,
                                            static_cast<std::size_t>(shards_[s].size())),
                     kServerRank, kTagGradient);
  }
  return pull_in_order(parameters);
}

void ParameterClient::finish(const PsReport& report) {
  for (int s = 0; s < static_cast<int>(servers_.size()); ++s) send_header(s, kDone, report);
}

}  // namespace dagr
