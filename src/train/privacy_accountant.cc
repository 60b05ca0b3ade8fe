// RDP of the sampled Gaussian mechanism, a line-by-line port of Opacus's
// opacus/accountants/analysis/rdp.py (see the header for the formulas' sources).
//
// A_α = E_{z~μ0}[(μ(z)/μ0(z))^α] with μ0 = N(0, σ²), μ = (1−q)μ0 + q N(1, σ²).
// For integer α the binomial expansion gives
//   A_α = Σ_{i=0..α} C(α,i) q^i (1−q)^(α−i) exp((i² − i)/(2σ²));
// for fractional α the integral is split at z0 = σ² log(1/q − 1) + 1/2 and each
// half expanded in a series of terms with erfc factors, summed until both
// terms fall below e^-30. Everything is summed in log space.
#include "dagr/train/privacy_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dagr/error.h"

namespace dagr::train {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(e^x + e^y)
double log_add(double x, double y) {
  const double a = std::min(x, y), b = std::max(x, y);
  if (a == -kInf) return b;
  return std::log1p(std::exp(a - b)) + b;
}

// log(e^x − e^y), x ≥ y
double log_sub(double x, double y) {
  DAGR_ENFORCE(x >= y, Error, "privacy accountant: a negative difference in log space");
  if (y == -kInf) return x;
  if (x == y) return -kInf;
  const double d = std::expm1(x - y);
  return std::isinf(d) ? x : std::log(d) + y;  // as Opacus: an overflow gives x
}

// log(erfc(x)), accurate where erfc underflows: for x > 25 the asymptotic
// series erfc(x) = e^(−x²)/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + …)
// (scipy's log_ndtr does the same past its own threshold).
double log_erfc(double x) {
  if (x <= 25) return std::log(std::erfc(x));
  const double r = 1 / (x * x);
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log1p(r * (-0.5 + r * (0.75 + r * (-1.875 + r * 6.5625))));
}

double log_a_integer(double q, double sigma, int alpha) {
  double log_a = -kInf;
  for (int i = 0; i <= alpha; ++i) {
    const double log_binom = std::lgamma(alpha + 1.0) - std::lgamma(i + 1.0) - std::lgamma(alpha - i + 1.0);
    const double log_coef = log_binom + i * std::log(q) + (alpha - i) * std::log1p(-q);
    log_a = log_add(log_a, log_coef + (static_cast<double>(i) * i - i) / (2 * sigma * sigma));
  }
  return log_a;
}

double log_a_fractional(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  // C(α, i) = Π_{k<i} (α − k)/(k + 1), kept as a sign and a log magnitude.
  double log_abs_coef = 0, sign = 1;
  for (int i = 0;; ++i) {
    if (i > 0) {
      const double factor = (alpha - (i - 1)) / i;
      log_abs_coef += std::log(std::fabs(factor));
      if (factor < 0) sign = -sign;
    }
    const double j = alpha - i;
    const double log_t0 = log_abs_coef + i * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_abs_coef + j * std::log(q) + i * std::log1p(-q);
    const double log_e0 = std::log(0.5) + log_erfc((i - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (static_cast<double>(i) * i - i) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    if (sign > 0) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    if (std::max(log_s0, log_s1) < -30) break;
  }
  return log_add(log_a0, log_a1);
}

double rdp_one_step(double q, double sigma, double alpha) {
  if (q == 0) return 0;
  if (sigma == 0) return kInf;
  if (q == 1) return alpha / (2 * sigma * sigma);
  if (std::isinf(alpha)) return kInf;
  const double log_a = std::floor(alpha) == alpha ? log_a_integer(q, sigma, static_cast<int>(alpha))
                                                  : log_a_fractional(q, sigma, alpha);
  return log_a / (alpha - 1);
}

}  // namespace

const std::vector<double>& default_rdp_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o;
    for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) o.push_back(a);
    return o;
  }();
  return orders;
}

std::vector<double> rdp_sampled_gaussian(double q, double sigma, std::int64_t steps, const std::vector<double>& orders) {
  DAGR_ENFORCE(q >= 0 && q <= 1, InputError, "privacy accountant: sampling rate ", q, " is not in [0, 1]");
  DAGR_ENFORCE(sigma >= 0 && std::isfinite(sigma), InputError, "privacy accountant: noise multiplier ", sigma,
               " is not a finite number ≥ 0");
  DAGR_ENFORCE(steps >= 0, InputError, "privacy accountant: negative step count ", steps);
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double alpha : orders) {
    DAGR_ENFORCE(alpha > 1, InputError, "privacy accountant: RDP order ", alpha, " is not above 1");
    const double one = rdp_one_step(q, sigma, alpha);
    rdp.push_back(steps == 0 ? 0 : one * static_cast<double>(steps));
  }
  return rdp;
}

PrivacySpent privacy_spent(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                           RdpConversion conversion) {
  DAGR_ENFORCE(orders.size() == rdp.size() && !orders.empty(), InputError, "privacy accountant: ", orders.size(),
               " orders for ", rdp.size(), " RDP values");
  DAGR_ENFORCE(delta > 0 && delta < 1, InputError, "privacy accountant: delta ", delta, " is not in (0, 1)");
  PrivacySpent best{kInf, std::numeric_limits<double>::quiet_NaN()};
  for (std::size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k];
    const double eps = conversion == RdpConversion::improved
                           ? rdp[k] - (std::log(delta) + std::log(a)) / (a - 1) + std::log((a - 1) / a)
                           : rdp[k] - std::log(delta) / (a - 1);
    if (!std::isnan(eps) && eps < best.epsilon) best = {eps, a};
  }
  return best;
}

double dp_epsilon(double q, double sigma, std::int64_t steps, double delta) {
  const auto& orders = default_rdp_orders();
  return privacy_spent(orders, rdp_sampled_gaussian(q, sigma, steps, orders), delta).epsilon;
}

double noise_for_epsilon(double target_epsilon, double delta, double q, std::int64_t steps, double tolerance) {
  DAGR_ENFORCE(target_epsilon > 0 && std::isfinite(target_epsilon), InputError, "target epsilon ", target_epsilon,
               " is not a finite number above 0");
  DAGR_ENFORCE(tolerance > 0, InputError, "epsilon tolerance ", tolerance, " is not above 0");
  double low = 0, high = 10, eps_high = kInf;
  while (eps_high > target_epsilon) {
    high *= 2;
    DAGR_ENFORCE(high <= 1e6, InputError, "epsilon ", target_epsilon, " at delta ", delta, " cannot be reached in ",
                 steps, " steps at sampling rate ", q, " with any noise multiplier up to 10^6");
    eps_high = dp_epsilon(q, high, steps, delta);
  }
  while (target_epsilon - eps_high > tolerance) {
    const double mid = (low + high) / 2;
    const double eps = dp_epsilon(q, mid, steps, delta);
    if (eps < target_epsilon) {
      high = mid;
      eps_high = eps;
    } else {
      low = mid;
    }
  }
  return high;
}

}  // namespace dagr::train
