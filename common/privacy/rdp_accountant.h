// A Rényi-DP accountant for the sampled Gaussian mechanism (Mironov, Talwar & Zhang, "Rényi
// Differential Privacy of the Sampled Gaussian Mechanism", 2019), written for fedtail: the privacy
// cost of DP-FedAvg rounds in which each client takes part with probability q (Poisson sampling)
// and the sum of the clipped updates gets Gaussian noise of standard deviation σ·C (σ: the noise
// multiplier, C: the clip norm).
//
// RDP at integer orders α uses the exact binomial expansion of A_α (section 3.3 of the paper);
// fractional orders use the two series split at z0 = σ²·log(1/q - 1) + 1/2 (same section). Both are
// summed in log space, as in TensorFlow Privacy's rdp_accountant.py (now dp_accounting's
// rdp_privacy_accountant.py) and Opacus's accountants/analysis/rdp.py. RDP composes additively
// over rounds; ε at a given δ is the best over the orders of the conversion of Balle et al. 2020
// (arXiv 1905.09982, Theorem 21; arXiv 2004.00010, Proposition 12), as in TensorFlow Privacy:
//   ε = rdp(α) + log((α-1)/α) - (log δ + log α) / (α - 1),
// used only for α > 1.01 (unstable as α -> 1), and ε = 0 at an order whose rdp(α) is so small
// that δ >= sqrt(1 - exp(-rdp(α))) (the KL bound: rdp(α) >= KL for α >= 1).
//
// The free functions are pure and thread-safe.
#ifndef FEDTAIL_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
#define FEDTAIL_COMMON_PRIVACY_RDP_ACCOUNTANT_H_

#include <cstdint>
#include <vector>

#include "common/base/status.h"

namespace fedtail::privacy {

// The orders used by default, in increasing order (72 of them): 1.25, 1.5, 1.75, 2, 2.25, 2.5, 3,
// 3.5, 4, 4.5, 5, 6, ..., 63, 128, 256, 512: the list of TensorFlow Privacy's
// compute_dp_sgd_privacy (tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_lib.py).
// (Opacus's RDPAccountant.DEFAULT_ALPHAS is 1.1, 1.2, ..., 10.9, 12, ..., 63; dp_accounting's
// DEFAULT_RDP_ORDERS is that list with 11 and 128, 256, 512, 1024 added.)
std::vector<double> default_rdp_orders();

// RDP of one step of the sampled Gaussian mechanism (Poisson sampling, add/remove-one neighbours)
// with sampling rate q and noise multiplier sigma, at `order`: 0 when q is 0; else +inf when sigma
// is 0 or order is +inf; order/(2 sigma²) when q is 1. Exact (to rounding) at integer orders; at
// fractional orders an upper bound within a relative ~1e-10 (the alternating series is cut with its
// next-term bound added), and +inf where it does not converge in 200000 terms (that order then
// never gives the best ε).
// Preconditions (checked; a violation aborts): q in [0, 1], sigma >= 0, order > 1.
double sampled_gaussian_rdp(double q, double noise_multiplier, double order);

// RDP of `steps` (>= 0) steps at each of `orders`: steps * sampled_gaussian_rdp(...), with
// 0 * inf = 0. Same preconditions.
std::vector<double> compute_rdp(double q, double noise_multiplier, int64_t steps,
                                const std::vector<double>& orders);

// The smallest ε (and the order achieving it, the first on ties) such that the mechanism with RDP
// `rdp` at `orders` is (ε, δ)-DP; ε >= 0, and +inf (with order orders[0]) when no order gives a
// finite bound (e.g. rdp all +inf). Orders in [1, 1.01] contribute only through the KL bound.
// kInvalidArgument on empty or mismatched sizes, δ outside (0, 1), an order < 1 or NaN, or an
// rdp value that is negative or NaN.
struct EpsilonAtOrder {
  double epsilon = 0;
  double order = 0;
};
Result<EpsilonAtOrder> epsilon_from_rdp(const std::vector<double>& orders,
                                        const std::vector<double>& rdp, double delta);

// ε after `steps` steps (default orders). kInvalidArgument when q is outside [0, 1], sigma < 0,
// steps < 0 or δ is outside (0, 1).
Result<double> epsilon_after(double q, double noise_multiplier, int64_t steps, double delta);

// The smallest noise multiplier, to a relative 1e-3, for which `steps` steps at rate q stay within
// (target_epsilon, δ), found by bisection (ε decreases as σ grows): the result σ satisfies
// epsilon_after(q, σ, steps, δ) <= target_epsilon, and σ·(1 - 1e-3) does not. The search covers
// [1e-3, 1e4]: 1e-3 is returned when even it satisfies the target; 0 when q is 0 or steps is 0.
// kInvalidArgument when target_epsilon <= 0 (or NaN), when no σ <= 1e4 reaches it, or on the
// argument errors of epsilon_after.
Result<double> noise_multiplier_for(double q, int64_t steps, double target_epsilon, double delta);

// The accountant of a run: one sampled-Gaussian step per round (rates and multipliers may change
// between rounds), its RDP kept summed at the default orders. Its state is that sum and the step
// count, so that a resumed run accounts for the rounds before the checkpoint exactly.
// Thread-compatible: const methods may run concurrently; add_step and restore need exclusive use.
class RdpAccountant {
 public:
  RdpAccountant();
  // Adds one step. Preconditions as sampled_gaussian_rdp (q in [0, 1], sigma >= 0; aborts).
  void add_step(double q, double noise_multiplier);
  // ε at δ after the steps so far (0 before any); +inf when δ is outside (0, 1).
  double epsilon(double delta) const;
  // ε at δ if one more step (q, σ) were taken: to stop before a budget would be exceeded.
  // Same preconditions as add_step; +inf when δ is outside (0, 1).
  double epsilon_after_step(double q, double noise_multiplier, double delta) const;
  int64_t steps() const { return steps_; }
  // The summed RDP at default_rdp_orders() (for checkpoints), and a restore from it.
  const std::vector<double>& rdp() const { return rdp_; }
  // Replaces the state. kInvalidArgument (state unchanged) when rdp's size is not that of
  // default_rdp_orders(), an entry is negative or NaN (+inf is allowed), steps < 0, or steps is 0
  // with a non-zero entry.
  Status restore(std::vector<double> rdp, int64_t steps);

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
  int64_t steps_ = 0;
};

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
