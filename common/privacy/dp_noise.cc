#include "common/privacy/dp_noise.h"

#include <cmath>
#include <string>

#include "common/privacy/secagg_crypto.h"

namespace fedtail::privacy {

double l2_norm(const std::vector<FloatSpan>& spans) {
  // Scaled accumulation is not needed: float squares summed in double cannot overflow for any
  // float input (FLT_MAX² ~ 1e77) over fewer than 1e230 elements.
  double sum = 0;
  for (const FloatSpan& span : spans) {
    for (size_t i = 0; i < span.second; ++i) {
      const double x = span.first[i];
      sum += x * x;
    }
  }
  return std::sqrt(sum);
}

double clip_factor(double norm, double clip_norm) {
  FEDTAIL_CHECK(norm >= 0 && clip_norm >= 0);
  if (norm <= clip_norm) return 1.0;  // includes norm == 0
  return clip_norm / norm;
}

void add_gaussian_noise(double stddev, Rng& rng, double* values, size_t n) {
  FEDTAIL_CHECK(stddev >= 0);
  if (stddev == 0) return;
  for (size_t i = 0; i < n; ++i) values[i] += stddev * rng.normal();
}

double next_clip_norm(double clip, double unclipped_fraction_noisy, double target_quantile,
                      double learning_rate) {
  FEDTAIL_CHECK(clip > 0 && learning_rate >= 0);
  return clip * std::exp(-learning_rate * (unclipped_fraction_noisy - target_quantile));
}

Result<double> update_noise_multiplier(double noise_multiplier, double clipped_count_stddev) {
  if (!(noise_multiplier > 0)) {
    return Status::InvalidArgument("noise_multiplier: must be > 0 (got " +
                                   std::to_string(noise_multiplier) + ")");
  }
  const double count_multiplier = 2 * clipped_count_stddev;
  if (!(count_multiplier > noise_multiplier)) {
    return Status::InvalidArgument("clipped_count_stddev: must be > noise_multiplier / 2 = " +
                                   std::to_string(noise_multiplier / 2) + " (got " +
                                   std::to_string(clipped_count_stddev) + ")");
  }
  const double inv_z2 = 1 / (noise_multiplier * noise_multiplier);
  const double inv_b2 = 1 / (count_multiplier * count_multiplier);
  return 1 / std::sqrt(inv_z2 - inv_b2);
}

Rng os_seeded_rng() {
  const Key32 key = random_key();
  uint64_t seed = 0;
  for (size_t i = 0; i < 8; ++i) seed = (seed << 8) | key[i];
  return Rng(seed);
}

}  // namespace fedtail::privacy
