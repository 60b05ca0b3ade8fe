// PowerSGD gradient compression as a DDP communication hook (Vogels et al.
// 2019, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
// Optimization"; PyTorch's powerSGD_hook, with its defaults).
//
//   auto hook = dagr::powersgd_hook({.rank = 2, .start_iter = 10});
//   ddp.register_comm_hook(hook);
//   ...
//   checkpoint.comm_hook = hook->state(comm);   // collective; hook->load_state(...) on resume
//
// Each step, for every gradient that is a matrix M (n × m; a convolution's
// kernel viewed as out × rest) worth compressing, with r = min(n, m, rank):
//   M += E (error feedback: what earlier steps' approximations left out)
//   P = M Q            (Q: m × r, last step's Q (warm start), or random)
//   P = Σ_ranks P      (allreduce), orthogonalised (Gram-Schmidt)
//   Q = Mᵀ P, Q = average over ranks of Q (allreduce)
//   M̂ = P Qᵀ: the average's rank-r approximation goes into the bucket
//   E = M - M̂         (this rank's part of what was left out)
// so (n + m)·r numbers cross the network instead of n·m. Gradients of one
// dimension (biases) and matrices with n·m ≤ (n + m)·r·min_compression_rate
// go uncompressed, divided by the world size and summed in the same allreduce
// as the Ps: two collectives per bucket. Before step start_iter every bucket,
// and at any step a bucket with no matrix worth compressing, goes whole to
// uncompressed_hook (allreduce_hook() unless set; no error is kept then).
// fp16_compress_hook() there halves the warm-up's bytes, as PyTorch's
// fp16_compress_wrapper(powerSGD_hook) does for what PowerSGD leaves
// uncompressed; dagr keeps P and Q in 32 bits.
//
// The result depends on the ranks' M only through their average (P and Q are
// linear in it), so the error buffers matter only through their average:
// state() keeps that average (world-size independent) and load_state gives it
// to every rank, which continues the run as it would have gone on.
#pragma once

#include <cstdint>
#include <memory>

#include "dagr/train/comm_hook.h"

namespace dagr {

struct PowerSgdOptions {
  int rank = 1;                       // matrix_approximation_rank
  std::int64_t start_iter = 1000;     // start_powerSGD_iter: steps of plain allreduce first
  bool error_feedback = true;
  bool warm_start = true;             // start each step's power iteration from the last step's Q
  double min_compression_rate = 2;    // compress a matrix only if n·m > (n + m)·r · this
  std::uint64_t seed = 0;             // of the random Qs (the same on every rank)
  // What averages the buckets PowerSGD does not compress (nullptr: allreduce_hook()). It must carry
  // DDP's check values (carries_check() or plain_average(): allreduce, fp16, bf16) and keep no state
  // of its own: state() saves PowerSGD's alone.
  std::shared_ptr<CommHook> uncompressed_hook = nullptr;
};

class PowerSgdHook : public CommHook {
 public:
  explicit PowerSgdHook(PowerSgdOptions options);
  ~PowerSgdHook() override;
  std::string name() const override { return "powersgd"; }
  bool carries_check() const override { return true; }  // with the plain values, or beside the Ps
  HookWork run(Communicator& comm, GradBucket& bucket) override;
  // "powersgd/iter", "powersgd/q/<parameter index>", "powersgd/error/<parameter index>"
  // (errors averaged over comm's ranks).
  std::map<std::string, torch::Tensor> state(Communicator& comm) override;
  void load_state(const std::map<std::string, torch::Tensor>& state) override;
  std::int64_t iteration() const;
  // Numbers sent per step by the last step (of whatever width: the uncompressed hook's may be 16-bit), and
  // what plain allreduce would send.
  std::int64_t sent_elements() const;
  std::int64_t dense_elements() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// InputError unless rank ≥ 1, start_iter ≥ 0, min_compression_rate ≥ 0 and the
// uncompressed hook carries DDP's check values.
std::shared_ptr<PowerSgdHook> powersgd_hook(PowerSgdOptions options = {});

}  // namespace dagr
