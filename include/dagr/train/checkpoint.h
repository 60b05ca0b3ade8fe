// dagr::TrainingCheckpoint — the state a training run needs to continue where
// it stopped, written atomically with a checksum; any program can use it.
//
//   dagr::TrainingCheckpoint c;
//   c.model = dagr::module_state(*model);
//   c.optimizer = dagr::optimizer_state(optimizer, model->named_parameters());
//   c.epoch = epoch; c.samples_in_epoch = samples; c.steps = steps;
//   if (comm.rank() == 0) dagr::write_checkpoint("runs/x", c);
//   …
//   if (auto c = dagr::read_latest_checkpoint("runs/x")) {
//     dagr::load_module_state(*model, c->model);
//     dagr::load_optimizer_state(optimizer, model->named_parameters(), c->optimizer);
//   }
//
// Tensors are dense and named like the dense model's parameters, so a
// checkpoint does not depend on the number of workers or on how a model is
// split (dagr train gathers tensor-parallel shards before writing).
//
// A file: "DAGRCKPT", u32 format version, u32 CRC-32 (zlib) of the payload, u64
// payload length, then the payload (a torch::serialize archive). It is written
// to NAME.tmp, fsynced, renamed to NAME, and the folder fsynced: a crash leaves
// the previous checkpoint or the new one, never a torn one under its name.
// After a write it and the one before it are kept; older ones are removed, and
// so are any named after it (left ahead of a run that resumed behind them
// because they were unreadable). Reading checks
// magic, length and checksum; a bad file is skipped with a warning naming it,
// and the one before is used.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace dagr {

struct TrainingCheckpoint {
  // Where the run stands: the next step is in `epoch` (from 1), after
  // `samples_in_epoch` samples of that epoch's order, over all ranks.
  std::int64_t epoch = 1;
  std::int64_t samples_in_epoch = 0;
  std::int64_t steps = 0;          // optimizer steps taken in all
  std::uint64_t sampler_seed = 0;
  torch::Tensor rng_state;         // libtorch's default CPU generator; undefined: not saved
  std::vector<std::string> metrics;  // the run's metrics lines so far (dagr train: metrics.jsonl)
  std::string extra;               // anything else the program wants back (dagr train: JSON)
  std::map<std::string, torch::Tensor> model;      // parameters and buffers by name
  std::map<std::string, torch::Tensor> optimizer;  // "<parameter>/<state>" and "group<i>/lr"
  std::map<std::string, torch::Tensor> comm_hook;  // DDP's communication hook's state (CommHook::state)
};

// Writes DIR/checkpoint-<epoch>-<samples_in_epoch>.dagr as described above and
// keeps it and the one before it: older ones are removed, and so are any named
// after it (left by a run that resumed behind them because they were
// unreadable); returns its path. Call it on one rank.
std::string write_checkpoint(const std::string& dir, const TrainingCheckpoint& checkpoint);

// The newest checkpoint in `dir` that is whole, or nullopt when there is none.
// Each bad one is skipped with a warning on stderr naming the file and why.
std::optional<TrainingCheckpoint> read_latest_checkpoint(const std::string& dir);

// The same as bytes (the checked payload) and its path, to send to other
// ranks; decode_checkpoint turns the bytes back into the checkpoint.
struct CheckpointBytes {
  std::string path;
  std::vector<std::uint8_t> payload;
};
std::optional<CheckpointBytes> read_latest_checkpoint_bytes(const std::string& dir);
TrainingCheckpoint decode_checkpoint(const std::vector<std::uint8_t>& payload, const std::string& name);
// The payload of a checkpoint, as in the file (to send a state to other ranks
// without writing it: what elastic training does after losing a rank).
std::vector<std::uint8_t> encode_checkpoint(const TrainingCheckpoint& checkpoint);

// Removes every checkpoint file in `dir` (a fresh run into the folder of an old one).
void remove_checkpoints(const std::string& dir);

// The named parameters and buffers of a module, cloned; and back (InputError
// when a name is missing or a shape differs).
std::map<std::string, torch::Tensor> module_state(const torch::nn::Module& module);
void load_module_state(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& state);

// SGD (momentum_buffer) and Adam (step, exp_avg, exp_avg_sq, max_exp_avg_sq)
// state of the given parameters under their names, plus each group's lr; and
// back. InputError for another optimizer. A ZeroOptimizer (zero_optimizer.h)
// gives and takes the dense form of its SGD's or Adam's state: optimizer_state()
// is then collective over the DDP's ranks.
std::map<std::string, torch::Tensor> optimizer_state(torch::optim::Optimizer& optimizer,
                                                     const torch::OrderedDict<std::string, torch::Tensor>& params);
// load_optimizer_state refuses (InputError) a state another optimizer wrote —
// Adam's moments into SGD, SGD's momentum buffers into Adam — which it would
// otherwise drop; a state with no per-element entries (SGD without momentum,
// no step taken) loads into either.
void load_optimizer_state(torch::optim::Optimizer& optimizer,
                          const torch::OrderedDict<std::string, torch::Tensor>& params,
                          const std::map<std::string, torch::Tensor>& state);
// The same check on its own: `optimizer` is "SGD" or "Adam".
void check_optimizer_state_kind(const std::map<std::string, torch::Tensor>& state, const std::string& optimizer);

// For moving optimizer state between a split model and its dense form: each
// kind of state kept per element of a parameter (momentum_buffer, exp_avg,
// exp_avg_sq, max_exp_avg_sq: tensors shaped like their parameter) is replaced
// by `map` of that kind's tensors in the order of `params`. A kind that not
// every one of `params` has (yet) is left as it is; counts (Adam's step) and
// learning rates are the same for a shard as for the whole and stay.
using TensorsMap = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;
void map_per_element_state(std::map<std::string, torch::Tensor>& state,
                           const torch::OrderedDict<std::string, torch::Tensor>& params, const TensorsMap& map);

}  // namespace dagr
