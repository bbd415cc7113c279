#include "strategies/fedloge/sse_c.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

namespace fedtail::strategies {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kAdamBeta1 = 0.9;
constexpr double kAdamBeta2 = 0.999;
constexpr double kAdamEps = 1e-8;
// Below half of float32's smallest subnormal a value rounds to 0 in the float32 weight.
constexpr double kNegligible = 1e-150;
const double kFloatUnderflow = std::numeric_limits<float>::denorm_min() / 2.0;

double degrees(double radians) { return radians * 180.0 / kPi; }

// The Q factor of the d×K matrix `a` (row-major, d >= K), by classical Gram–Schmidt with one
// re-orthogonalisation pass per column ("twice is enough"). Returns false when a column is
// (numerically) dependent on the previous ones.
bool orthonormalize_columns(std::vector<double>& a, int64_t d, int64_t k) {
  std::vector<double> r(k);
  for (int64_t c = 0; c < k; ++c) {
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t j = 0; j < c; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += a[i * k + j] * a[i * k + c];
        r[j] = dot;
      }
      for (int64_t j = 0; j < c; ++j) {
        for (int64_t i = 0; i < d; ++i) a[i * k + c] -= r[j] * a[i * k + j];
      }
    }
    double norm = 0;
    for (int64_t i = 0; i < d; ++i) norm += a[i * k + c] * a[i * k + c];
    norm = std::sqrt(norm);
    if (!(norm > 1e-10)) return false;
    for (int64_t i = 0; i < d; ++i) a[i * k + c] /= norm;
  }
  return true;
}

// The optimisation state over M (d×K, row-major: entry (i, c) at i·K + c, class c = column c).
class SseCOptimizer {
 public:
  // `active`: the flat indices of the surviving (trainable) entries.
  SseCOptimizer(std::vector<double> m, std::vector<int64_t> active, int64_t d, int64_t k,
                double column_norm)
      : m_(std::move(m)),
        active_(std::move(active)),
        d_(d),
        k_(k),
        column_norm_(column_norm),
        grad_(m_.size()),
        exp_avg_(active_.size()),
        exp_avg_sq_(active_.size()),
        norms_(k),
        inverse_norms_(k),
        row_cols_(k),
        row_values_(k),
        gram_(k * k),
        partner_(k),
        cosine_(k),
        self_coef_(k) {}

  // One Adam step (PyTorch's Adam, amsgrad off, no weight decay) on the masked gradient: only the
  // surviving entries move (the reference multiplies the gradient by the mask, which leaves the
  // pruned entries' moments and updates at exactly 0).
  void step(double lr) {
    gradient();
    beta1_power_ *= kAdamBeta1;  // β^t by running products: no libm pow() in the result
    beta2_power_ *= kAdamBeta2;
    const double bias1 = 1 - beta1_power_;
    const double bias2_sqrt = std::sqrt(1 - beta2_power_);
    const double step_size = lr / bias1;
    const size_t n = active_.size();
    for (size_t a = 0; a < n; ++a) {
      const int64_t e = active_[a];
      const double g = grad_[e];
      // Moments of an entry whose gradient has vanished decay geometrically (x0.9 per step) into
      // double subnormals, which are ~100x slower; cut them off far below anything float32 shows.
      const double avg = exp_avg_[a] * kAdamBeta1 + (1 - kAdamBeta1) * g;
      const double avg_sq = exp_avg_sq_[a] * kAdamBeta2 + (1 - kAdamBeta2) * g * g;
      exp_avg_[a] = std::fabs(avg) < kNegligible ? 0.0 : avg;
      exp_avg_sq_[a] = avg_sq < kNegligible ? 0.0 : avg_sq;
      const double w =
          m_[e] - step_size * exp_avg_[a] / (std::sqrt(exp_avg_sq_[a]) / bias2_sqrt + kAdamEps);
      // An entry decaying towards 0 (many do: the optimum is sparser still) rounds to 0 in float32
      // anyway: snap it to 0 before it reaches the subnormals. It stays trainable and may grow
      // again.
      m_[e] = std::fabs(w) < kFloatUnderflow ? 0.0 : w;
    }
  }

  // The objective at the current M.
  double loss() {
    forward();
    double norm_loss = 0;
    double angle = 0;
    for (int64_t c = 0; c < k_; ++c) {
      norm_loss += (norms_[c] - column_norm_) * (norms_[c] - column_norm_);
      angle += std::acos(std::clamp(cosine_[c], -kSseCCosineClamp, kSseCCosineClamp));
    }
    return norm_loss - angle / static_cast<double>(k_);
  }

  const std::vector<double>& m() const { return m_; }

 private:
  // Column norms, the Gram matrix, and each column's most similar other column.
  void forward() {
    std::fill(norms_.begin(), norms_.end(), 0.0);
    std::fill(gram_.begin(), gram_.end(), 0.0);
    // Row by row over the non-zero entries only (pruned ones, and survivors snapped to 0): the
    // pairs of non-zeros of row i add their products to the upper triangle. At sparsity 0.6 this
    // is ~16% of the dense work.
    for (int64_t i = 0; i < d_; ++i) {
      const double* row = &m_[i * k_];
      int64_t n = 0;
      for (int64_t c = 0; c < k_; ++c) {
        if (row[c] == 0) continue;
        row_cols_[n] = c;
        row_values_[n] = row[c];
        ++n;
      }
      if (2 * n > k_) {
        // A dense row: the contiguous (vectorisable) form; adding the exact zeros' products
        // (±0) changes no sum, so both forms give the same Gram bit for bit.
        for (int64_t a = 0; a < n; ++a) {
          const int64_t c = row_cols_[a];
          double* __restrict__ g = &gram_[c * k_];
          const double* __restrict__ r = row;
          const double va = row_values_[a];
          for (int64_t j = c; j < k_; ++j) g[j] += va * r[j];
        }
      } else {
        for (int64_t a = 0; a < n; ++a) {
          double* g = &gram_[row_cols_[a] * k_];
          const double va = row_values_[a];
          for (int64_t b = a; b < n; ++b) g[row_cols_[b]] += va * row_values_[b];
        }
      }
    }
    for (int64_t c = 0; c < k_; ++c) {
      norms_[c] = std::sqrt(gram_[c * k_ + c]);
      inverse_norms_[c] = 1.0 / norms_[c];
    }
    for (int64_t c = 0; c < k_; ++c) {
      double best = -std::numeric_limits<double>::infinity();
      int64_t best_j = c;
      for (int64_t j = 0; j < k_; ++j) {
        if (j == c) continue;  // the reference fills the diagonal with −1
        const double dot = j > c ? gram_[c * k_ + j] : gram_[j * k_ + c];
        const double cos = dot * inverse_norms_[c] * inverse_norms_[j];
        if (cos > best) {
          best = cos;
          best_j = j;
        }
      }
      partner_[c] = best_j;
      cosine_[c] = best;
    }
  }

  // grad_ = ∂loss/∂M, masked.
  //   ∂/∂m_c Σ(‖m_c‖ − τ)²        = 2(‖m_c‖ − τ) · m_c/‖m_c‖
  //   ∂ cos(m_c, m_j)/∂m_c         = (u_j − cos·u_c)/‖m_c‖   (u = m/‖m‖), symmetric in j
  //   ∂/∂x [−(1/K) arccos(x)]     = (1/K)/sqrt(1 − x²), 0 where the clamp is active.
  void gradient() {
    forward();
    pairs_.clear();
    for (int64_t c = 0; c < k_; ++c) self_coef_[c] = 2 * (norms_[c] - column_norm_) / norms_[c];
    for (int64_t c = 0; c < k_; ++c) {
      const double x = cosine_[c];
      if (x < -kSseCCosineClamp || x > kSseCCosineClamp) continue;
      const double s = 1.0 / (static_cast<double>(k_) * std::sqrt(1 - x * x));
      const int64_t j = partner_[c];
      self_coef_[c] -= s * x / (norms_[c] * norms_[c]);
      self_coef_[j] -= s * x / (norms_[j] * norms_[j]);
      pairs_.push_back({c, j, s / (norms_[c] * norms_[j])});
    }
    for (int64_t i = 0; i < d_; ++i) {
      const double* row = &m_[i * k_];
      double* g = &grad_[i * k_];
      for (int64_t c = 0; c < k_; ++c) g[c] = self_coef_[c] * row[c];
      for (const Pair& p : pairs_) {
        g[p.c] += p.coef * row[p.j];
        g[p.j] += p.coef * row[p.c];
      }
    }
  }

  struct Pair {
    int64_t c;
    int64_t j;
    double coef;
  };

  std::vector<double> m_;
  const std::vector<int64_t> active_;  // flat indices of the trainable entries
  const int64_t d_;
  const int64_t k_;
  const double column_norm_;
  double beta1_power_ = 1;  // β1^t after t Adam steps
  double beta2_power_ = 1;  // β2^t

  // Scratch, sized once.
  std::vector<double> grad_;                  // d×K, read at the active entries only
  std::vector<double> exp_avg_, exp_avg_sq_;  // Adam moments, one per active entry
  std::vector<double> norms_;                 // ‖m_c‖
  std::vector<double> inverse_norms_;
  std::vector<int64_t> row_cols_;   // the non-zero columns of one row of M
  std::vector<double> row_values_;  // and their values
  std::vector<double> gram_;        // upper triangle of MᵀM (K×K)
  std::vector<int64_t> partner_;    // argmax_{j≠c} cos(m_c, m_j)
  std::vector<double> cosine_;      // that maximum
  std::vector<double> self_coef_;
  std::vector<Pair> pairs_;
};

}  // namespace

nlohmann::json SseCStats::to_json(bool with_time) const {
  nlohmann::json j = {
      {"pruned", pruned},         {"zeros", zeros},         {"mean_norm", mean_norm},
      {"min_norm", min_norm},     {"max_norm", max_norm},   {"mean_angle", mean_angle},
      {"min_angle", min_angle},   {"max_angle", max_angle}, {"target_angle", target_angle},
      {"final_loss", final_loss}, {"steps", steps}};
  if (with_time) j["seconds"] = seconds;
  return j;
}

SseCStats measure_sse_c(const std::vector<float>& weight, int64_t num_classes,
                        int64_t feature_dim) {
  const int64_t k = num_classes;
  const int64_t d = feature_dim;
  SseCStats s;
  std::vector<double> norms(k, 0.0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = 0; i < d; ++i) {
      const double w = weight[c * d + i];
      if (w == 0) ++s.zeros;
      norms[c] += w * w;
    }
    norms[c] = std::sqrt(norms[c]);
  }
  s.min_norm = *std::min_element(norms.begin(), norms.end());
  s.max_norm = *std::max_element(norms.begin(), norms.end());
  for (double n : norms) s.mean_norm += n / static_cast<double>(k);
  s.min_angle = std::numeric_limits<double>::infinity();
  s.max_angle = -std::numeric_limits<double>::infinity();
  double angle_sum = 0;
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t j = c + 1; j < k; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        dot += static_cast<double>(weight[c * d + i]) * static_cast<double>(weight[j * d + i]);
      }
      const double angle = degrees(std::acos(std::clamp(dot / (norms[c] * norms[j]), -1.0, 1.0)));
      angle_sum += angle;
      s.min_angle = std::min(s.min_angle, angle);
      s.max_angle = std::max(s.max_angle, angle);
    }
  }
  s.mean_angle = angle_sum / (static_cast<double>(k) * static_cast<double>(k - 1) / 2);
  s.target_angle = degrees(std::acos(-1.0 / static_cast<double>(k - 1)));
  return s;
}

Result<SseC> build_sse_c(int64_t feature_dim, int64_t num_classes, const SseCOptions& options,
                         Rng& rng) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t d = feature_dim;
  const int64_t k = num_classes;
  if (k < 2) {
    return Status::InvalidArgument("SSE-C: needs at least 2 classes (got " + std::to_string(k) +
                                   ")");
  }
  if (d < k) {
    return Status::InvalidArgument("SSE-C: the feature dimension (" + std::to_string(d) +
                                   ") must be >= the number of classes (" + std::to_string(k) +
                                   ") for a simplex ETF built as P·(I − 11ᵀ/K)");
  }
  if (!(options.sparsity >= 0 && options.sparsity < 1)) {
    return Status::InvalidArgument("SSE-C: sparsity must be in [0, 1) (got " +
                                   std::to_string(options.sparsity) + ")");
  }
  if (!(options.column_norm > 0) || !std::isfinite(options.column_norm)) {
    return Status::InvalidArgument("SSE-C: column_norm must be > 0");
  }
  if (options.steps < 0 || !(options.lr > 0) || !std::isfinite(options.lr)) {
    return Status::InvalidArgument("SSE-C: steps must be >= 0 and lr > 0");
  }

  // 1. The simplex ETF M = sqrt(K/(K−1)) · P · (I − 11ᵀ/K), d×K row-major.
  std::vector<double> p(d * k);
  for (double& v : p) v = rng.uniform();
  if (!orthonormalize_columns(p, d, k)) {
    return Status::Internal("SSE-C: the random d×K matrix is rank-deficient");
  }
  const double scale = std::sqrt(static_cast<double>(k) / static_cast<double>(k - 1));
  std::vector<double> m(d * k);
  for (int64_t i = 0; i < d; ++i) {
    double row_mean = 0;
    for (int64_t c = 0; c < k; ++c) row_mean += p[i * k + c];
    row_mean /= static_cast<double>(k);
    for (int64_t c = 0; c < k; ++c) m[i * k + c] = scale * (p[i * k + c] - row_mean);
  }

  // 2. Random pruning: int(sparsity · d · K) entries, as the reference computes the count.
  const int64_t zeros =
      static_cast<int64_t>(options.sparsity * static_cast<double>(d) * static_cast<double>(k));
  for (int64_t e : rng.sample_without_replacement(d * k, zeros)) m[e] = 0;
  std::vector<int64_t> active;
  std::vector<int64_t> survivors(k, 0);
  for (int64_t e = 0; e < d * k; ++e) {
    if (m[e] == 0) continue;
    active.push_back(e);
    ++survivors[e % k];
  }
  for (int64_t c = 0; c < k; ++c) {
    if (survivors[c] == 0) {
      return Status::InvalidArgument("SSE-C: sparsity " + std::to_string(options.sparsity) +
                                     " leaves class " + std::to_string(c) +
                                     " without a non-zero entry");
    }
  }

  // 3. Re-optimise the surviving entries.
  const int64_t pruned = d * k - static_cast<int64_t>(active.size());
  if (options.steps == 0) {
    // No re-optimisation: each column is scaled to column_norm (so sparsity 0 gives the exact
    // simplex ETF at that norm).
    std::vector<double> norms(k, 0.0);
    for (int64_t e = 0; e < d * k; ++e) norms[e % k] += m[e] * m[e];
    for (int64_t e = 0; e < d * k; ++e) m[e] *= options.column_norm / std::sqrt(norms[e % k]);
  }
  SseCOptimizer optimizer(std::move(m), std::move(active), d, k, options.column_norm);
  for (int64_t s = 0; s < options.steps; ++s) optimizer.step(options.lr);
  const double final_loss = optimizer.loss();

  // 4. Weight = Mᵀ in float32, bias U(±1/√d).
  SseC out;
  out.feature_dim = d;
  out.num_classes = k;
  out.weight.resize(k * d);
  const std::vector<double>& opt = optimizer.m();
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t c = 0; c < k; ++c) out.weight[c * d + i] = static_cast<float>(opt[i * k + c]);
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  out.bias.resize(k);
  for (float& b : out.bias) b = static_cast<float>((2 * rng.uniform() - 1) * bound);

  out.stats = measure_sse_c(out.weight, k, d);
  out.stats.pruned = pruned;
  out.stats.final_loss = final_loss;
  out.stats.steps = options.steps;
  out.stats.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace fedtail::strategies
