// The DP-SGD privacy accountant (dagr/train/privacy_accountant.h) against
// published figures and against tests/privacy_reference.py (Opacus's rdp.py
// re-typed with mpmath at 50 digits; its output is pasted below).
#include <gtest/gtest.h>

#include <cmath>

#include "dagr/error.h"
#include "dagr/train/privacy_accountant.h"

namespace dagr::train {
namespace {

// Within 1 % (the bar); the figures below agree far closer.
void expect_within_percent(double got, double want) { EXPECT_NEAR(got, want, 0.01 * std::fabs(want)) << got; }

TEST(PrivacyAccountant, DefaultOrdersAreOpacus) {
  const auto& o = default_rdp_orders();
  ASSERT_EQ(o.size(), 99u + 52u);
  EXPECT_DOUBLE_EQ(o.front(), 1.1);
  EXPECT_DOUBLE_EQ(o[98], 10.9);
  EXPECT_DOUBLE_EQ(o[99], 12);
  EXPECT_DOUBLE_EQ(o.back(), 63);
}

// Opacus's own test (opacus/tests/accountants_test.py, test_rdp_accountant):
// q 0.04, σ 1.5, int(90 / 0.04) steps, δ 1e-5 → ε 7.32911117143 (the mpmath port: 7.3291111714373, α 3.9).
TEST(PrivacyAccountant, MatchesOpacusTest) {
  const double eps = dp_epsilon(0.04, 1.5, 2250, 1e-5);
  EXPECT_NEAR(eps, 7.32911117143, 1e-6);
  const auto& orders = default_rdp_orders();
  EXPECT_DOUBLE_EQ(privacy_spent(orders, rdp_sampled_gaussian(0.04, 1.5, 2250, orders), 1e-5).order, 3.9);
}

// TF Privacy's README (Abadi et al.'s MNIST setting): compute_dp_sgd_privacy --N=60000
// --batch_size=256 --noise_multiplier=1.1 --epochs=60 --delta=1e-5 prints "eps = 3.01", with the
// classic conversion over its orders; the mpmath port gives 3.00921 at α 9.
TEST(PrivacyAccountant, MatchesTfPrivacyMnistClassic) {
  std::vector<double> tf_orders = {1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5};
  for (int a = 5; a < 64; ++a) tf_orders.push_back(a);
  for (double a : {128, 256, 512}) tf_orders.push_back(a);
  const auto rdp = rdp_sampled_gaussian(256.0 / 60000, 1.1, 14063, tf_orders);
  const auto spent = privacy_spent(tf_orders, rdp, 1e-5, RdpConversion::classic);
  expect_within_percent(spent.epsilon, 3.01);
  EXPECT_NEAR(spent.epsilon, 3.0092111729976, 1e-6);
  EXPECT_EQ(spent.order, 9);
}

// The same run under Opacus's improved conversion and orders: ε 2.59666 at α 8.1 (mpmath port).
TEST(PrivacyAccountant, MnistImprovedConversion) {
  const auto& orders = default_rdp_orders();
  const auto spent = privacy_spent(orders, rdp_sampled_gaussian(256.0 / 60000, 1.1, 14063, orders), 1e-5);
  EXPECT_NEAR(spent.epsilon, 2.5966555286904, 1e-6);
  EXPECT_DOUBLE_EQ(spent.order, 8.1);
}

// One step's RDP at fractional and integer orders (q 0.01, σ 0.8), from the mpmath port.
TEST(PrivacyAccountant, SingleStepRdpFractionalAndIntegerOrders) {
  const std::vector<double> orders = {1.5, 2.5, 7.3, 3, 40};
  const std::vector<double> want = {0.00027331069985828565, 0.00048945371572656892, 0.38811354606390306,
                                    0.00061336819645981856, 26.526748527191698};
  const auto rdp = rdp_sampled_gaussian(0.01, 0.8, 1, orders);
  for (std::size_t k = 0; k < orders.size(); ++k) EXPECT_NEAR(rdp[k], want[k], 1e-9 * want[k]) << orders[k];
}

TEST(PrivacyAccountant, EdgeCases) {
  const std::vector<double> orders = {2, 3.5};
  EXPECT_EQ(rdp_sampled_gaussian(0, 1, 10, orders)[0], 0);
  EXPECT_TRUE(std::isinf(rdp_sampled_gaussian(0.1, 0, 10, orders)[1]));
  EXPECT_DOUBLE_EQ(rdp_sampled_gaussian(1, 2, 3, orders)[1], 3 * 3.5 / 8);  // the plain Gaussian: α/(2σ²)
  EXPECT_TRUE(std::isinf(dp_epsilon(0.1, 0, 10, 1e-5)));
  EXPECT_THROW(rdp_sampled_gaussian(1.5, 1, 1, orders), InputError);
  EXPECT_THROW(rdp_sampled_gaussian(0.1, 1, 1, {1.0}), InputError);
  EXPECT_THROW(privacy_spent(orders, {1, 2}, 0), InputError);
  EXPECT_THROW(noise_for_epsilon(1e-9, 1e-5, 0.5, 1000000), InputError);
}

// Opacus's tests of get_noise_multiplier: ε 8, δ 1e-5, q 0.04 over 90 epochs (2250 steps) → 1.416
// (the mpmath port: 1.416015625); over 2000 steps → 1.3562.
TEST(PrivacyAccountant, NoiseForEpsilonMatchesOpacus) {
  EXPECT_NEAR(noise_for_epsilon(8, 1e-5, 0.04, 2250), 1.416015625, 1e-12);
  EXPECT_NEAR(noise_for_epsilon(8, 1e-5, 0.04, 2000), 1.3562, 1e-4);
  const double sigma = noise_for_epsilon(3, 1e-5, 256.0 / 60000, 14063);
  const double eps = dp_epsilon(256.0 / 60000, sigma, 14063, 1e-5);
  EXPECT_LE(eps, 3);
  EXPECT_GT(eps, 2.99);
}

}  // namespace
}  // namespace dagr::train
