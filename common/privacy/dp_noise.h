// Helpers for DP-FedAvg with adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy,
// "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv 1905.03871), on
// plain arrays: the coordinator clips each client update to L2 norm C, sums the clipped updates,
// adds Gaussian noise of standard deviation z_Δ·C to the sum, and moves C towards the
// target_quantile γ of the update norms using a noisy count of the unclipped updates.
//
// Pure functions except add_gaussian_noise, which draws from the Rng it is given; thread-safe as
// long as each thread passes its own arrays and Rng.
#ifndef FEDTAIL_COMMON_PRIVACY_DP_NOISE_H_
#define FEDTAIL_COMMON_PRIVACY_DP_NOISE_H_

#include <cstddef>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"

namespace fedtail::privacy {

// A read-only array of `second` floats at `first` (one tensor of an update), borrowed for the
// duration of the call.
using FloatSpan = std::pair<const float*, size_t>;

// The L2 norm of the concatenation of `spans`, sqrt(Σ x²), accumulated in double. 0 for no spans
// or empty spans. A span of size 0 may have a null pointer.
double l2_norm(const std::vector<FloatSpan>& spans);

// The factor that clips a vector of L2 norm `norm` to at most `clip_norm`: min(1, C / norm), and 1
// when norm is 0. Preconditions: norm >= 0, clip_norm >= 0.
double clip_factor(double norm, double clip_norm);

// Adds independent N(0, stddev²) noise to each of values[0..n), drawing n rng.normal() values in
// order (so the noise is a function of the Rng's state). stddev 0 leaves the values unchanged and
// draws nothing. `values` is borrowed for the call; it may be null when n is 0.
// Precondition: stddev >= 0.
void add_gaussian_noise(double stddev, Rng& rng, double* values, size_t n);

// The geometric clip-norm update of Andrew et al. 2021 (section 2, Algorithm 1):
//   C' = C · exp(-η_C · (b̃ - γ)),
// where b̃ = unclipped_fraction_noisy is the noisy fraction of the round's updates whose norm was
// at most C (Σ 1[‖Δ_i‖ <= C] plus N(0, σ_b²) noise, divided by the number of clients), γ =
// target_quantile and η_C = learning_rate. b̃ > γ (too few clipped) shrinks C; b̃ < γ grows it.
// b̃ may lie outside [0, 1] because of the noise. Preconditions: clip > 0, learning_rate >= 0.
double next_clip_norm(double clip, double unclipped_fraction_noisy, double target_quantile,
                      double learning_rate);

// The noise split of Andrew et al. 2021 (section 3, privacy of adaptive clipping): releasing the
// update sum with noise multiplier z_Δ and the unclipped count with noise standard deviation σ_b
// (the count is taken over b_i - 1/2, sensitivity 1/2, i.e. noise multiplier 2σ_b) is as private
// as one Gaussian mechanism with noise multiplier z, where z^-2 = z_Δ^-2 + (2σ_b)^-2. So for a
// total z, the update sum gets
//   z_Δ = (z^-2 - (2σ_b)^-2)^(-1/2).
// Returns z_Δ (>= z). kInvalidArgument when z <= 0, or σ_b <= z/2 (then no finite z_Δ exists;
// increase clipped_count_stddev or decrease z).
Result<double> update_noise_multiplier(double noise_multiplier, double clipped_count_stddev);

// A generator seeded from the OS CSPRNG (RAND_bytes), for DP noise: noise derived from the run seed
// could be recomputed, and subtracted, by anyone who knows the config. Runs that draw from it are
// not bit-reproducible.
Rng os_seeded_rng();

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_DP_NOISE_H_
