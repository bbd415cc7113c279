// Class-conditional Gaussians of backbone features: what CCVR's clients upload, how the server
// pools them, and how it samples virtual features from the pool (Luo et al., NeurIPS 2021, §4).
//
// Wire form of one client's statistics (a TensorBundle with exactly these tensors, K classes, d
// features):
//   "ccvr.count"  int64   [K]        N_c,k: the client's training examples of class c (>= 0); they
//                                    sum to the update's num_examples. int64 rather than float
//                                    keeps counts exact, so "non-integral" cannot arise.
//   "ccvr.mean"   float64 [K, d]     mu_c,k, the mean feature of class c; 0 when N_c,k = 0
//   "ccvr.cov"    float32 [K, d, d]  Sigma_c,k, the unbiased covariance (divided by N_c,k - 1),
//                                    symmetric; 0 when N_c,k <= 1
// Every class is sent (dense), present or not: the shapes are then fixed by the model and the
// checks are simple. The means travel in float64 because pooling subtracts N_c mu_c mu_c^T from
// sum_k N_c,k mu_c,k mu_c,k^T: float32 means would put their rounding error (relative 6e-8 of
// mu^2) into a difference that may be far smaller than mu^2. They cost K·d·8 bytes, nothing
// beside the K·d²·4 bytes of the covariances (K = 100, d = 64: 1.6 MB; d = 512: 105 MB).
//
// Pooling (the paper's formulas, which give exactly the pooled unbiased covariance):
//   N_c     = sum_k N_c,k
//   mu_c    = sum_k (N_c,k / N_c) mu_c,k
//   Sigma_c = sum_k (N_c,k - 1)/(N_c - 1) Sigma_c,k + sum_k N_c,k/(N_c - 1) mu_c,k mu_c,k^T
//             - N_c/(N_c - 1) mu_c mu_c^T
// GaussianPool keeps N_c, sum_k N_c,k mu_c,k and sum_k [(N_c,k - 1) Sigma_c,k + N_c,k mu_c,k
// mu_c,k^T] (upper triangle only), in compensated double-double sums: O(K·d²) memory whatever
// the number of clients, and the pooled values do not depend on the order in which updates arrive
// (short of a sum landing within 2^-100 of a rounding boundary), as WeightedAverage does for
// models. A class with N_c <= 1 has no covariance and gets no virtual features.
//
// Thread-compatible; free functions are reentrant. LibTorch exceptions are caught and returned as
// kInternal.
#ifndef FEDTAIL_STRATEGIES_CCVR_CLASS_GAUSSIANS_H_
#define FEDTAIL_STRATEGIES_CCVR_CLASS_GAUSSIANS_H_

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::strategies {

// Tensor names on the wire.
inline constexpr char kCcvrCountTensor[] = "ccvr.count";
inline constexpr char kCcvrMeanTensor[] = "ccvr.mean";
inline constexpr char kCcvrCovTensor[] = "ccvr.cov";

// The client's side: the statistics bundle (names and dtypes above) of `features` (float N×d, any
// device; computed in float64) with `labels` (int64 N, in [0, num_classes)). The covariance of a
// class is symmetrised ((S + S^T)/2) before rounding to float32. kInvalidArgument for mismatched
// or misshapen inputs, num_classes < 1, or a label outside [0, num_classes); kInternal for a
// LibTorch failure.
Result<TensorBundle> class_statistics(const torch::Tensor& features, const torch::Tensor& labels,
                                      int64_t num_classes);

// One class's pooled Gaussian.
struct ClassGaussian {
  int64_t count = 0;         // N_c
  std::vector<double> mean;  // d values; empty when count == 0
  std::vector<double> cov;   // d×d, row-major, exactly symmetric; empty when count <= 1
};

// The server's side: the running pool of one statistics round. Move-only value.
class GaussianPool {
 public:
  // An empty pool for K = num_classes classes of d = feature_dim features (both >= 1, else
  // kInvalidArgument). kResourceExhausted when the accumulators (about 8·K·d² bytes) cannot be
  // allocated.
  static Result<GaussianPool> create(int64_t num_classes, int64_t feature_dim);

  GaussianPool(GaussianPool&&) noexcept = default;
  GaussianPool& operator=(GaussianPool&&) noexcept = default;
  GaussianPool(const GaussianPool&) = delete;
  GaussianPool& operator=(const GaussianPool&) = delete;

  // OK when add(stats, num_examples) would succeed now. Otherwise, with a message naming the
  // tensor:
  //   kInvalidArgument when num_examples <= 0; a tensor is missing, extra, or of another dtype or
  //     shape ("tensor \"ccvr.cov\": shape [2,16,17] != expected [2,16,16]"); a count is
  //     negative; the counts do not sum to num_examples; a class with count >= 2 has a negative
  //     variance; or a pooled count would overflow int64;
  //   kCorruption for a NaN or infinite mean or covariance value (check_finite's message).
  // Means of classes with count 0 and covariances of classes with count <= 1 are not used.
  Status check(const TensorBundle& stats, int64_t num_examples) const;

  // Folds in one client's statistics; check() first, so a refused bundle changes nothing.
  Status add(const TensorBundle& stats, int64_t num_examples);

  int64_t num_classes() const { return num_classes_; }
  int64_t feature_dim() const { return feature_dim_; }
  // Bundles folded in so far, and the sum of their num_examples.
  int64_t updates() const { return updates_; }
  int64_t total_examples() const { return total_examples_; }

  // The pooled Gaussian of class `c` (formulas in the file comment). Precondition
  // (FEDTAIL_CHECK): 0 <= c < num_classes(). The pool is unchanged.
  ClassGaussian gaussian(int64_t c) const;

 private:
  GaussianPool() = default;

  // Constant after create().
  int64_t num_classes_ = 0;
  int64_t feature_dim_ = 0;
  int64_t triangle_ = 0;  // d(d+1)/2: upper-triangle entries per class

  std::vector<int64_t> counts_;  // K: N_c
  std::vector<double> sum_;      // K×d×2: sum_k N_c,k mu_c,k as (hi, lo) pairs
  std::vector<double> second_;   // K×triangle×2: sum_k (N-1)Sigma + N mu mu^T, (hi, lo)
  int64_t updates_ = 0;
  int64_t total_examples_ = 0;
};

// How a covariance was factored for sampling.
enum class CovFactor {
  kZero,              // the zero matrix: every sample is the mean
  kCholesky,          // Cholesky of Sigma itself
  kJitteredCholesky,  // Cholesky of Sigma + eps·I
  kEigen,             // V·diag(sqrt(max(lambda, 0))) from the eigendecomposition of Sigma
};

struct GaussianSample {
  torch::Tensor features;  // float32 [n, d] on the CPU
  CovFactor factor = CovFactor::kCholesky;
  double jitter = 0;  // eps added to the diagonal (kJitteredCholesky), else 0
};

// Draws n samples x = mu + L z from N(mu, Sigma), computed in float64 and rounded to float32. z
// holds n·d standard normals drawn from `rng` (Rng::normal, row by row), so the same Rng state
// gives the same bits. L is, first found of:
//   - the Cholesky factor of Sigma;
//   - the Cholesky factor of Sigma + eps·I, eps = 1e-5·(mean diagonal), then ×10 up to 6 tries
//     (eps <= the mean diagonal): features after a ReLU often have dead dimensions, which make
//     Sigma singular;
//   - V·diag(sqrt(max(lambda, 0))) from the eigendecomposition Sigma = V diag(lambda) V^T, when
//     Sigma is not positive semi-definite (e.g. rounding in the pooled sum), or its mean
//     diagonal is not positive. The samples then have the covariance of Sigma's PSD part.
// The zero matrix gives n copies of mu. `cov` is d×d row-major (symmetric; only its symmetric
// part is used). kInvalidArgument when mean is empty, cov.size() != d², n < 0 or a value is not
// finite; kInternal for a LibTorch failure.
Result<GaussianSample> sample_gaussian(const std::vector<double>& mean,
                                       const std::vector<double>& cov, int64_t n, Rng& rng);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_CCVR_CLASS_GAUSSIANS_H_
