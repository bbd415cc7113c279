#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace fedtail::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLogHalf = -0.69314718055994530942;   // log(1/2)
constexpr double kHalfLogPi = 0.57236494292470008707;  // log(π) / 2

// log(exp(a) + exp(b)), exact when either is -inf (a zero).
double log_add(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == -kInf) return a;
  return a + std::log1p(std::exp(b - a));
}

// A signed number kept as (sign, log of magnitude): the fractional-order series alternates in
// sign once i > α, and the magnitudes of A_α reach exp(1e6) for small σ.
struct SignedLog {
  bool negative = false;
  double log_mag = -kInf;  // zero

  void add(bool term_negative, double log_term) {
    if (log_term == -kInf) return;
    if (log_mag == -kInf) {
      negative = term_negative;
      log_mag = log_term;
      return;
    }
    if (term_negative == negative) {
      log_mag = log_add(log_mag, log_term);
      return;
    }
    // Opposite signs: the larger magnitude keeps its sign.
    if (log_term > log_mag) {
      negative = term_negative;
      std::swap(log_mag, log_term);
    }
    log_mag = log_term == log_mag ? -kInf : log_mag + std::log1p(-std::exp(log_term - log_mag));
  }
};

// log(erfc(x)), accurate where erfc(x) underflows: for x > 20 (erfc(20) ~ 5e-176 is still a
// normal double, so std::erfc is used below that), the asymptotic expansion
//   erfc(x) = exp(-x²) / (x sqrt(π)) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶) + 105/(16x⁸) - ...),
// whose first omitted term is below 1e-11 at x = 20.
double log_erfc(double x) {
  if (x <= 20) return std::log(std::erfc(x));
  const double inv2 = 1.0 / (x * x);
  const double series = 1 - inv2 / 2 * (1 - 1.5 * inv2 * (1 - 2.5 * inv2 * (1 - 3.5 * inv2)));
  return -x * x - std::log(x) - kHalfLogPi + std::log(series);
}

// log(A_α) for integer α >= 2 and 0 < q < 1 (Mironov et al. 2019, section 3.3):
//   A_α = Σ_{i=0..α} C(α, i) (1-q)^(α-i) q^i exp((i² - i) / (2σ²)),
// every term positive, summed in log space.
double log_a_int(double q, double sigma, int64_t alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double inv_2var = 1.0 / (2 * sigma * sigma);
  double log_a = -kInf;
  double log_binom = 0;  // log C(α, 0)
  for (int64_t i = 0; i <= alpha; ++i) {
    if (i > 0) {
      // C(α, i) = C(α, i-1) · (α - i + 1) / i; incremental, so no lgamma (not thread-safe).
      log_binom += std::log(static_cast<double>(alpha - i + 1)) - std::log(static_cast<double>(i));
    }
    const double di = static_cast<double>(i);
    const double term = log_binom + di * log_q + static_cast<double>(alpha - i) * log_1mq +
                        (di * di - di) * inv_2var;
    log_a = log_add(log_a, term);
  }
  return log_a;
}

// The most terms of the fractional series; an order whose series has not converged by then is
// given +inf (so it never gives the best ε), as dp_accounting does after 1000 terms. The tail of
// A1 decays only polynomially (like i^-(α+2)), so small orders can need thousands of terms.
constexpr int kMaxFracTerms = 200000;

// log(A_α) for fractional α > 1 and 0 < q < 1 (Mironov et al. 2019, section 3.3): A_α = A0 + A1,
// the integrals below and above z0 = σ² log(1/q - 1) + 1/2, each a series over i >= 0 with
// j = α - i:
//   A0 = Σ C(α, i) q^i (1-q)^j exp((i² - i)/(2σ²)) · erfc((i - z0)/(√2 σ)) / 2
//   A1 = Σ C(α, i) q^j (1-q)^i exp((j² - j)/(2σ²)) · erfc((z0 - j)/(√2 σ)) / 2.
// The i-th terms of both share the sign of C(α, i), which alternates once i > α; both magnitudes
// then decrease. So the sum can stop after a term t_i that is negligible (relative 1e-10 of
// log A_α, at least 1e-14 of A_α), and S_i + |t_i| bounds A_α from above (the alternating-series
// remainder is at most |t_{i+1}| <= |t_i|). Summing magnitudes instead, as dp_accounting has since
// 2024, also bounds A_α but is looser (6.71e-4 instead of the exact 6.50e-4 for TF Privacy's
// q = 0.01, σ = 2.5, α = 1.5, 50 steps) and converges as slowly. When the signed sum cancels
// (below e^-10 of the sum of magnitudes, the case q = 0.4, σ = 12, α ~ 59 of dp_accounting's
// test_log_a_frac_positive), a bound on the rounding error of the terms is added as well. A_α >= 1
// (RDP >= 0) bounds the result below by 0.
double log_a_frac(double q, double sigma, double alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double inv_2var = 1.0 / (2 * sigma * sigma);
  const double z0 = sigma * sigma * (log_1mq - log_q) + 0.5;
  const double inv_sqrt2_sigma = 1.0 / (std::sqrt(2.0) * sigma);
  const double first_alternating = std::floor(alpha) + 1;  // C(α, i+1)/C(α, i) < 0 from here

  SignedLog total;               // Σ t_i, t_i = s0_i + s1_i
  double log_abs_total = -kInf;  // log Σ |t_i|
  double max_abs_log_term = 0;   // for the rounding bound
  double log_binom = 0;          // log |C(α, 0)|
  bool binom_negative = false;
  double last_s0 = kInf, last_s1 = kInf;
  for (int i = 0; i < kMaxFracTerms; ++i) {
    if (i > 0) {
      const double factor = alpha - (i - 1);  // C(α, i) = C(α, i-1) · (α - i + 1) / i
      log_binom += std::log(std::fabs(factor)) - std::log(static_cast<double>(i));
      if (factor < 0) binom_negative = !binom_negative;
    }
    const double di = static_cast<double>(i);
    const double j = alpha - di;
    const double log_s0 = log_binom + di * log_q + j * log_1mq + (di * di - di) * inv_2var +
                          kLogHalf + log_erfc((di - z0) * inv_sqrt2_sigma);
    const double log_s1 = log_binom + j * log_q + di * log_1mq + (j * j - j) * inv_2var + kLogHalf +
                          log_erfc((z0 - j) * inv_sqrt2_sigma);
    const double log_t = log_add(log_s0, log_s1);
    total.add(binom_negative, log_t);
    log_abs_total = log_add(log_abs_total, log_t);
    max_abs_log_term = std::max({max_abs_log_term, std::fabs(log_s0), std::fabs(log_s1)});
    const bool decreasing = log_s0 < last_s0 && log_s1 < last_s1;
    last_s0 = log_s0;
    last_s1 = log_s1;
    if (di < first_alternating || !decreasing || total.negative) continue;
    const double log_sum = total.log_mag;
    const double rel_tol = std::max(1e-10 * std::max(log_sum, 0.0), 1e-14);
    if (log_t >= log_sum + std::log(rel_tol)) continue;
    double log_bound = log_add(log_sum, log_t);
    if (log_sum < log_abs_total - 10) {
      // Each term carries a relative error of a few ulps times its log's magnitude.
      const double rounding =
          8 * (di + 1) * std::numeric_limits<double>::epsilon() * (1 + max_abs_log_term);
      log_bound = log_add(log_bound, log_abs_total + std::log(rounding));
    }
    return std::max(log_bound, 0.0);
  }
  return kInf;
}

Status check_common_args(double q, double noise_multiplier, int64_t steps, double delta) {
  if (!(q >= 0 && q <= 1)) {
    return Status::InvalidArgument("q: sampling rate must be in [0, 1] (got " + std::to_string(q) +
                                   ")");
  }
  if (!(noise_multiplier >= 0)) {
    return Status::InvalidArgument("noise_multiplier: must be >= 0 (got " +
                                   std::to_string(noise_multiplier) + ")");
  }
  if (steps < 0) {
    return Status::InvalidArgument("steps: must be >= 0 (got " + std::to_string(steps) + ")");
  }
  if (!(delta > 0 && delta < 1)) {
    return Status::InvalidArgument("delta: must be in (0, 1) (got " + std::to_string(delta) + ")");
  }
  return Status::OK();
}

}  // namespace

std::vector<double> default_rdp_orders() {
  std::vector<double> orders = {1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5};
  for (int a = 5; a <= 63; ++a) orders.push_back(a);
  orders.push_back(128);
  orders.push_back(256);
  orders.push_back(512);
  return orders;
}

double sampled_gaussian_rdp(double q, double noise_multiplier, double order) {
  FEDTAIL_CHECK(q >= 0 && q <= 1);
  FEDTAIL_CHECK(noise_multiplier >= 0);
  FEDTAIL_CHECK(order > 1);
  if (q == 0) return 0;
  if (noise_multiplier == 0 || std::isinf(order)) return kInf;
  if (q == 1) return order / (2 * noise_multiplier * noise_multiplier);
  double log_a;
  // Integer orders up to 2^53 are exact doubles; larger ones would take too many terms anyway.
  if (order == std::floor(order) && order <= 1e6) {
    log_a = log_a_int(q, noise_multiplier, static_cast<int64_t>(order));
  } else {
    log_a = log_a_frac(q, noise_multiplier, order);
  }
  return log_a / (order - 1);
}

std::vector<double> compute_rdp(double q, double noise_multiplier, int64_t steps,
                                const std::vector<double>& orders) {
  FEDTAIL_CHECK(steps >= 0);
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double order : orders) {
    const double one = sampled_gaussian_rdp(q, noise_multiplier, order);
    rdp.push_back(steps == 0 ? 0.0 : one * static_cast<double>(steps));
  }
  return rdp;
}

Result<EpsilonAtOrder> epsilon_from_rdp(const std::vector<double>& orders,
                                        const std::vector<double>& rdp, double delta) {
  if (orders.empty() || orders.size() != rdp.size()) {
    return Status::InvalidArgument("epsilon_from_rdp: orders (" + std::to_string(orders.size()) +
                                   ") and rdp (" + std::to_string(rdp.size()) +
                                   ") must be non-empty and of the same size");
  }
  if (!(delta > 0 && delta < 1)) {
    return Status::InvalidArgument("delta: must be in (0, 1) (got " + std::to_string(delta) + ")");
  }
  EpsilonAtOrder best{kInf, orders[0]};
  for (size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k];
    const double r = rdp[k];
    if (!(a >= 1)) {
      return Status::InvalidArgument("orders[" + std::to_string(k) + "]: must be >= 1 (got " +
                                     std::to_string(a) + ")");
    }
    if (!(r >= 0)) {
      return Status::InvalidArgument("rdp[" + std::to_string(k) + "]: must be >= 0 (got " +
                                     std::to_string(r) + ")");
    }
    double eps;
    if (delta * delta + std::expm1(-r) >= 0) {
      // δ >= sqrt(1 - exp(-KL)) with KL <= rdp(α): (0, δ)-DP already.
      eps = 0;
    } else if (a > 1.01 && !std::isinf(r)) {
      eps = r + std::log1p(-1 / a) - std::log(delta * a) / (a - 1);
    } else {
      eps = kInf;
    }
    if (eps < best.epsilon) best = {eps, a};
  }
  best.epsilon = std::max(best.epsilon, 0.0);
  return best;
}

Result<double> epsilon_after(double q, double noise_multiplier, int64_t steps, double delta) {
  FEDTAIL_RETURN_IF_ERROR(check_common_args(q, noise_multiplier, steps, delta));
  const std::vector<double> orders = default_rdp_orders();
  FEDTAIL_ASSIGN_OR_RETURN(
      EpsilonAtOrder e,
      epsilon_from_rdp(orders, compute_rdp(q, noise_multiplier, steps, orders), delta));
  return e.epsilon;
}

Result<double> noise_multiplier_for(double q, int64_t steps, double target_epsilon, double delta) {
  FEDTAIL_RETURN_IF_ERROR(check_common_args(q, /*noise_multiplier=*/1, steps, delta));
  if (!(target_epsilon > 0)) {
    return Status::InvalidArgument("target_epsilon: must be > 0 (got " +
                                   std::to_string(target_epsilon) + ")");
  }
  if (q == 0 || steps == 0) return 0.0;
  constexpr double kMinSigma = 1e-3;
  constexpr double kMaxSigma = 1e4;
  const std::vector<double> orders = default_rdp_orders();
  auto fits = [&](double sigma) {
    Result<EpsilonAtOrder> e =
        epsilon_from_rdp(orders, compute_rdp(q, sigma, steps, orders), delta);
    return e.ok() && e->epsilon <= target_epsilon;
  };
  // Bracket: `hi` fits, `lo` does not (or lo is kMinSigma / 2 and hi kMinSigma).
  double lo, hi = 1;
  if (fits(hi)) {
    while (hi > kMinSigma && fits(hi / 2)) hi /= 2;
    if (hi <= kMinSigma) return kMinSigma;
    lo = hi / 2;
  } else {
    do {
      lo = hi;
      hi = std::min(2 * hi, kMaxSigma);
      if (fits(hi)) break;
      if (hi == kMaxSigma) {
        return Status::InvalidArgument(
            "target_epsilon: " + std::to_string(target_epsilon) +
            " is not reached even with noise multiplier 1e4 (q=" + std::to_string(q) +
            ", steps=" + std::to_string(steps) + ", delta=" + std::to_string(delta) + ")");
      }
    } while (true);
  }
  // Halve the bracket until lo >= hi·(1 - 5e-4): then σ·(1 - 1e-3) < lo does not fit either.
  while (hi - lo > 5e-4 * hi) {
    const double mid = 0.5 * (lo + hi);
    if (fits(mid)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

RdpAccountant::RdpAccountant() : orders_(default_rdp_orders()), rdp_(orders_.size(), 0.0) {}

void RdpAccountant::add_step(double q, double noise_multiplier) {
  for (size_t k = 0; k < orders_.size(); ++k) {
    rdp_[k] += sampled_gaussian_rdp(q, noise_multiplier, orders_[k]);
  }
  ++steps_;
}

double RdpAccountant::epsilon(double delta) const {
  if (steps_ == 0) return 0;
  Result<EpsilonAtOrder> e = epsilon_from_rdp(orders_, rdp_, delta);
  return e.ok() ? e->epsilon : kInf;
}

double RdpAccountant::epsilon_after_step(double q, double noise_multiplier, double delta) const {
  std::vector<double> rdp = rdp_;
  for (size_t k = 0; k < orders_.size(); ++k) {
    rdp[k] += sampled_gaussian_rdp(q, noise_multiplier, orders_[k]);
  }
  Result<EpsilonAtOrder> e = epsilon_from_rdp(orders_, rdp, delta);
  return e.ok() ? e->epsilon : kInf;
}

Status RdpAccountant::restore(std::vector<double> rdp, int64_t steps) {
  if (rdp.size() != orders_.size()) {
    return Status::InvalidArgument("rdp: expected " + std::to_string(orders_.size()) +
                                   " values (one per default order), got " +
                                   std::to_string(rdp.size()));
  }
  if (steps < 0) {
    return Status::InvalidArgument("steps: must be >= 0 (got " + std::to_string(steps) + ")");
  }
  for (size_t k = 0; k < rdp.size(); ++k) {
    if (!(rdp[k] >= 0)) {
      return Status::InvalidArgument("rdp[" + std::to_string(k) + "]: must be >= 0 (got " +
                                     std::to_string(rdp[k]) + ")");
    }
    if (steps == 0 && rdp[k] != 0) {
      return Status::InvalidArgument("rdp[" + std::to_string(k) +
                                     "]: must be 0 when steps is 0 (got " + std::to_string(rdp[k]) +
                                     ")");
    }
  }
  rdp_ = std::move(rdp);
  steps_ = steps;
  return Status::OK();
}

}  // namespace fedtail::privacy
