#include "common/privacy/dp_noise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fedtail::privacy {
namespace {

TEST(DpNoiseTest, L2NormSpansConcatenation) {
  // sqrt(3² + 4² + 12²) = sqrt(169) = 13.
  const std::vector<float> a = {3, 4};
  const std::vector<float> b = {12};
  EXPECT_DOUBLE_EQ(l2_norm({{a.data(), a.size()}, {b.data(), b.size()}}), 13.0);
  // Signs do not matter; an empty span (null pointer) adds nothing.
  const std::vector<float> c = {-3, 0, -4};
  EXPECT_DOUBLE_EQ(l2_norm({{c.data(), c.size()}, {nullptr, 0}}), 5.0);
  EXPECT_EQ(l2_norm({}), 0.0);
  // Accumulated in double: 1e6 values of 1e-3 give sqrt(1e6·1e-6) = 1 to float's input rounding.
  const std::vector<float> many(1000000, 1e-3f);
  EXPECT_NEAR(l2_norm({{many.data(), many.size()}}), 1.0, 1e-6);
  // Large floats do not overflow: sqrt(2)·1e30.
  const std::vector<float> big = {1e30f, 1e30f};
  EXPECT_NEAR(l2_norm({{big.data(), big.size()}}), std::sqrt(2.0) * 1e30, 1e24);
}

TEST(DpNoiseTest, ClipFactor) {
  EXPECT_EQ(clip_factor(/*norm=*/0, /*clip_norm=*/1), 1.0);  // nothing to clip
  EXPECT_EQ(clip_factor(/*norm=*/0, /*clip_norm=*/0), 1.0);
  EXPECT_EQ(clip_factor(/*norm=*/5, /*clip_norm=*/10), 1.0);  // already inside
  EXPECT_EQ(clip_factor(/*norm=*/10, /*clip_norm=*/10), 1.0);
  EXPECT_EQ(clip_factor(/*norm=*/20, /*clip_norm=*/5), 0.25);  // 5/20
  EXPECT_EQ(clip_factor(/*norm=*/3, /*clip_norm=*/0), 0.0);
  // The clipped vector has norm C: 13 · (2/13) = 2.
  EXPECT_DOUBLE_EQ(13.0 * clip_factor(13, 2), 2.0);
}

TEST(DpNoiseTest, ZeroStddevLeavesValuesAndRng) {
  std::vector<double> v = {1, 2, 3};
  Rng rng(7);
  Rng reference(7);
  add_gaussian_noise(0, rng, v.data(), v.size());
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(rng.next_u64(), reference.next_u64());  // nothing drawn
  add_gaussian_noise(1.0, rng, nullptr, 0);         // n = 0 is fine
}

TEST(DpNoiseTest, NoiseIsStddevTimesRngNormalsInOrder) {
  std::vector<double> v(5, 10.0);
  Rng rng = Rng::derive(42, "dp_noise", {3, 1});
  Rng reference = Rng::derive(42, "dp_noise", {3, 1});
  add_gaussian_noise(0.5, rng, v.data(), v.size());
  for (double x : v) EXPECT_DOUBLE_EQ(x, 10.0 + 0.5 * reference.normal());
}

TEST(DpNoiseTest, NoiseHasTheRequestedMeanAndVariance) {
  // n = 200000 draws of N(0, 2.5²) added to 1: the sample mean has standard error
  // 2.5/sqrt(n) = 0.0056 and the sample variance 2.5²·sqrt(2/n) = 0.0198; the bounds are ~5 of
  // those. Fixed seed, so the test is deterministic.
  constexpr size_t kN = 200000;
  constexpr double kStddev = 2.5;
  std::vector<double> v(kN, 1.0);
  Rng rng(20210611);
  add_gaussian_noise(kStddev, rng, v.data(), v.size());
  double sum = 0;
  for (double x : v) sum += x;
  const double mean = sum / kN;
  double sq = 0;
  for (double x : v) sq += (x - mean) * (x - mean);
  const double variance = sq / (kN - 1);
  EXPECT_NEAR(mean, 1.0, 0.03);
  EXPECT_NEAR(variance, kStddev * kStddev, 0.1);
  // Symmetric: about half of the draws fall below the mean (standard error 0.0011).
  size_t below = 0;
  for (double x : v) below += x < 1.0;
  EXPECT_NEAR(static_cast<double>(below) / kN, 0.5, 0.006);
}

TEST(DpNoiseTest, NextClipNormIsGeometricUpdate) {
  // C' = C·exp(-η(b̃ - γ)): C = 1, b̃ = 0.7, γ = 0.5, η = 0.2 -> exp(-0.04) = 0.960789439152323.
  EXPECT_NEAR(next_clip_norm(1.0, 0.7, 0.5, 0.2), 0.960789439152323, 1e-15);
  // b̃ = 0.3 -> exp(0.04) = 1.040810774192388, times C = 2.
  EXPECT_NEAR(next_clip_norm(2.0, 0.3, 0.5, 0.2), 2 * 1.040810774192388, 1e-14);
  // b̃ = γ, or η = 0: unchanged.
  EXPECT_EQ(next_clip_norm(3.0, 0.5, 0.5, 0.2), 3.0);
  EXPECT_EQ(next_clip_norm(3.0, 0.9, 0.5, 0.0), 3.0);
  // Noise may push b̃ outside [0, 1]: b̃ = -0.5, γ = 0.5, η = 1 -> C·e.
  EXPECT_NEAR(next_clip_norm(1.0, -0.5, 0.5, 1.0), std::exp(1.0), 1e-15);
  // Geometric: two updates with opposite errors cancel.
  EXPECT_NEAR(next_clip_norm(next_clip_norm(1.5, 0.8, 0.5, 0.2), 0.2, 0.5, 0.2), 1.5, 1e-15);
}

TEST(DpNoiseTest, UpdateNoiseMultiplierSplitsTheBudget) {
  // z = 1, σ_b = 1: (1 - (2·1)^-2)^(-1/2) = (3/4)^(-1/2) = 1.1547005383792515.
  Result<double> z = update_noise_multiplier(1.0, 1.0);
  ASSERT_TRUE(z.ok());
  EXPECT_NEAR(*z, 1.1547005383792515, 1e-15);
  // Flower's default σ_b = clients/20, with 100 clients: σ_b = 5, z = 1:
  // (1 - 1/100)^(-1/2) = 1.0050378152592121.
  z = update_noise_multiplier(1.0, 5.0);
  ASSERT_TRUE(z.ok());
  EXPECT_NEAR(*z, 1.0050378152592121, 1e-15);
  // The split composes back: z^-2 = z_Δ^-2 + (2σ_b)^-2.
  z = update_noise_multiplier(0.8, 0.7);
  ASSERT_TRUE(z.ok());
  EXPECT_GT(*z, 0.8);
  EXPECT_NEAR(1 / (*z * *z) + 1 / (1.4 * 1.4), 1 / (0.8 * 0.8), 1e-12);
}

TEST(DpNoiseTest, UpdateNoiseMultiplierRejectsTooLittleCountNoise) {
  // 2σ_b must exceed z.
  EXPECT_EQ(update_noise_multiplier(1.0, 0.5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(update_noise_multiplier(1.0, 0.4).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(update_noise_multiplier(1.0, 0.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(update_noise_multiplier(0.0, 1.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(update_noise_multiplier(-1.0, 1.0).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtail::privacy
