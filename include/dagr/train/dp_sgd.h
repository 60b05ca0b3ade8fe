// DP-SGD (Abadi et al. 2016) for torch::nn::Sequential models of Linear and
// Conv2d layers (with any parameter-free layers between them): per-example
// gradient clipping without a loop over examples, Gaussian noise in shares,
// and a way to hand the result to DistributedDataParallel.
//
//   dagr::DistributedDataParallel ddp(model, comm);
//   at::Generator noise = dagr::train::dp_noise_generator(key, comm.rank(), step);
//   auto batch = dagr::train::clip_per_example(model, x, y, clip);      // forward + per-example clipping
//   dagr::train::add_noise_share(batch.clipped_sum, sigma * clip, comm.size(), noise);
//   for (auto& g : batch.clipped_sum) g.mul_(comm.size() / double(global_batch));
//   dagr::train::backward_with_gradients(*model, batch.clipped_sum);   // DDP averages: the DP-SGD gradient
//   optimizer.step();
//
// Per-example gradient norms come from each layer's input a_i and the
// gradient δ_i of example i's loss with respect to the layer's output:
//   Linear:  g_i(W) = δ_i a_iᵀ, so ‖g_i(W)‖² = ‖a_i‖²·‖δ_i‖²; g_i(b) = δ_i;
//   Conv2d:  with U_i = unfold(a_i) (in·kh·kw × L positions) and δ_i as out × L,
//            g_i(W) = δ_i U_iᵀ (one batched matmul), g_i(b) = Σ_L δ_i.
// The δ_i of every layer come from one autograd pass of the summed loss with
// respect to the layers' outputs (parameters get no .grad from it, so DDP's
// hooks stay quiet). Each example's gradient is scaled by
// min(1, C/(‖g_i‖ + 1e-6)) (Opacus's factor) and the scaled gradients summed:
// for Linear (c ⊙ δ)ᵀa, for Conv2d Σ_i c_i g_i(W).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace dagr::train {

struct ClippedBatch {
  torch::Tensor logits;  // the forward pass's output (detached)
  torch::Tensor loss;    // mean cross-entropy of the batch (detached, for reporting)
  torch::Tensor norms;   // each example's gradient norm over all parameters, before clipping (B)
  // Σ_i min(1, C/(‖g_i‖ + 1e-6)) g_i, one tensor per parameter in model->parameters() order.
  std::vector<torch::Tensor> clipped_sum;
};

// Forward of `model` on x (batch first), cross-entropy against labels y,
// per-example gradients clipped to norm `clip` (> 0) and summed. InputError
// for a layer with parameters other than Linear and Conv2d (zero padding,
// groups 1), or for clip ≤ 0.
ClippedBatch clip_per_example(torch::nn::Sequential& model, const torch::Tensor& x, const torch::Tensor& y,
                              double clip);

// The generator of one rank's noise at one step: seeded from (key, rank,
// step) alone, so a run with the same key draws the same noise, a resumed
// run included, and ranks draw independent noise.
at::Generator dp_noise_generator(std::uint64_t key, int rank, std::int64_t step);

// Adds this rank's share of the noise: N(0, std²/shares) to every element
// (shares ranks each adding one give N(0, std²) in the sum).
void add_noise_share(std::vector<torch::Tensor>& sums, double std, int shares, at::Generator& generator);

// A backward pass after which each parameter's gradient is `gradients[k]`
// (the backward of Σ_k ⟨p_k, gradients[k]⟩): DDP's hooks fire as after the
// loss's backward and average the gradients over the ranks.
void backward_with_gradients(torch::nn::Module& model, const std::vector<torch::Tensor>& gradients);

}  // namespace dagr::train
