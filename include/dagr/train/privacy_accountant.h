// The privacy accountant of DP-SGD: Rényi differential privacy (RDP) of the
// sampled Gaussian mechanism, as Opacus computes it (opacus/accountants/
// analysis/rdp.py, itself from TF Privacy; Mironov, Talwar, Zhang 2019,
// arXiv:1908.10530, section 3.3).
//
// One step of DP-SGD releases the sum of clipped per-example gradients (norm
// at most C) over a batch in which each example is taken with probability q,
// plus N(0, σ²C²) noise. Its RDP at order α is log(A_α)/(α-1); T steps
// compose to T times that. (ε, δ)-DP follows at the best α of a list.
//
//   auto rdp = dagr::train::rdp_sampled_gaussian(q, sigma, steps, dagr::train::default_rdp_orders());
//   auto [eps, alpha] = dagr::train::privacy_spent(dagr::train::default_rdp_orders(), rdp, 1e-5);
//   double eps2 = dagr::train::dp_epsilon(q, sigma, steps, 1e-5);           // the same, in one call
//   double sigma2 = dagr::train::noise_for_epsilon(3.0, 1e-5, q, steps);     // the σ that gives ε ≤ 3
//
// Torch-free: plain doubles.
#pragma once

#include <cstdint>
#include <vector>

namespace dagr::train {

// Opacus's RDPAccountant.DEFAULT_ALPHAS: 1.1, 1.2, …, 10.9, then 12, 13, …, 63.
const std::vector<double>& default_rdp_orders();

// RDP of `steps` steps of the sampled Gaussian mechanism with sampling rate q
// (0 ≤ q ≤ 1) and noise multiplier σ (≥ 0), at each order (> 1). Integer
// orders use the binomial sum, fractional ones the two-sided series of
// Mironov et al. (terms until both are below e^-30). q = 0 gives 0, σ = 0
// gives +inf. InputError for arguments out of range.
std::vector<double> rdp_sampled_gaussian(double q, double sigma, std::int64_t steps, const std::vector<double>& orders);

// How (ε, δ)-DP is read off RDP at order α.
enum class RdpConversion {
  // Balle et al. 2020 (arXiv:1905.09982, theorem 21), what Opacus uses:
  //   ε = rdp − (log δ + log α)/(α − 1) + log((α − 1)/α)
  improved,
  // Mironov 2017, proposition 3, what TF Privacy printed before 2020 and
  // Abadi et al.'s figures rest on:  ε = rdp − log δ/(α − 1)
  classic,
};

struct PrivacySpent {
  double epsilon;  // +inf when no order gives a finite bound
  double order;    // the α that gives it
};

// The smallest ε over the orders (orders and rdp of equal length, 0 < δ < 1).
PrivacySpent privacy_spent(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                           RdpConversion conversion = RdpConversion::improved);

// ε after `steps` steps at (q, σ), δ, over default_rdp_orders() with the improved conversion.
double dp_epsilon(double q, double sigma, std::int64_t steps, double delta);

// The noise multiplier σ for which `steps` steps at rate q spend at most
// target_epsilon (and, as Opacus's get_noise_multiplier, at most `tolerance`
// less): σ doubles from 20 until ε ≤ target, then bisects. InputError when
// even σ = 10^6 spends more.
double noise_for_epsilon(double target_epsilon, double delta, double q, std::int64_t steps, double tolerance = 0.01);

}  // namespace dagr::train
