#include "strategies/ccvr/class_gaussians.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <tuple>
#include <utility>

#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"

namespace fedtail::strategies {

namespace {

// The first jitter tried, relative to the mean diagonal, and how many (×10 each) are tried before
// the eigendecomposition: 1e-5 … 1e0.
constexpr double kJitterStart = 1e-5;
constexpr int kJitterTries = 6;

// (hi, lo) += x, with hi + lo the compensated (double-double) sum (Knuth's TwoSum): the error of
// each addition is kept in lo, so the sum is exact to about 2^-100 relative, whatever the order.
inline void add_compensated(double* pair, double x) {
  const double hi = pair[0];
  const double s = hi + x;
  const double x_part = s - hi;
  const double err = (hi - (s - x_part)) + (x - x_part);
  pair[0] = s;
  pair[1] += err;
}

inline double value_of(const double* pair) { return pair[0] + pair[1]; }

struct Expected {
  const char* name;
  DType dtype;
  std::vector<int64_t> shape;
};

std::string spec(DType dtype, const std::vector<int64_t>& shape) {
  return std::string(dtype_name(dtype)) + " " + shape_to_string(shape);
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Client side

Result<TensorBundle> class_statistics(const torch::Tensor& features, const torch::Tensor& labels,
                                      int64_t num_classes) {
  if (num_classes < 1) {
    return Status::InvalidArgument("class_statistics: num_classes must be >= 1 (got " +
                                   std::to_string(num_classes) + ")");
  }
  try {
    if (!features.defined() || !labels.defined() || features.dim() != 2 || labels.dim() != 1 ||
        !features.is_floating_point() || features.size(0) != labels.size(0) ||
        features.size(1) < 1) {
      return Status::InvalidArgument(
          "class_statistics: expected float features N×d (d >= 1) and N labels");
    }
    const int64_t n = features.size(0);
    const int64_t d = features.size(1);
    // float64 throughout: the means are sent as such, and the covariance's centred products lose
    // nothing to the float32 features' magnitude.
    const torch::Tensor f = features.to(torch::kCPU, torch::kFloat64).contiguous();
    const torch::Tensor y = labels.to(torch::kCPU, torch::kInt64).contiguous();
    if (n > 0) {
      const int64_t low = y.min().item<int64_t>();
      const int64_t high = y.max().item<int64_t>();
      if (low < 0 || high >= num_classes) {
        return Status::InvalidArgument("class_statistics: label " +
                                       std::to_string(low < 0 ? low : high) + " is outside [0, " +
                                       std::to_string(num_classes) + ")");
      }
    }
    const torch::Tensor counts =
        n > 0 ? torch::bincount(y, /*weights=*/{}, /*minlength=*/num_classes).to(torch::kInt64)
              : torch::zeros({num_classes}, torch::kInt64);
    torch::Tensor means = torch::zeros({num_classes, d}, torch::kFloat64);
    torch::Tensor covs = torch::zeros({num_classes, d, d}, torch::kFloat32);
    const auto count = counts.accessor<int64_t, 1>();
    for (int64_t c = 0; c < num_classes; ++c) {
      const int64_t nc = count[c];
      if (nc == 0) continue;
      const torch::Tensor rows = f.index_select(0, y.eq(c).nonzero().squeeze(1));
      const torch::Tensor mu = rows.mean(/*dim=*/0);
      means[c].copy_(mu);
      if (nc < 2) continue;
      const torch::Tensor centred = rows - mu;
      torch::Tensor s = centred.t().mm(centred).div_(static_cast<double>(nc - 1));
      // BLAS need not produce a bit-symmetric product; (S + S^T)/2 is.
      s = (s + s.t()).mul_(0.5);
      covs[c].copy_(s);
    }
    TensorBundle out;
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor count_tensor, from_torch(kCcvrCountTensor, counts));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor mean_tensor, from_torch(kCcvrMeanTensor, means));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor cov_tensor, from_torch(kCcvrCovTensor, covs));
    FEDTAIL_RETURN_IF_ERROR(out.add(std::move(count_tensor)));
    FEDTAIL_RETURN_IF_ERROR(out.add(std::move(mean_tensor)));
    FEDTAIL_RETURN_IF_ERROR(out.add(std::move(cov_tensor)));
    return out;
  } catch (const std::exception& e) {
    return torch_failure("class_statistics", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Pooling

Result<GaussianPool> GaussianPool::create(int64_t num_classes, int64_t feature_dim) {
  if (num_classes < 1 || feature_dim < 1) {
    return Status::InvalidArgument("GaussianPool: num_classes and feature_dim must be >= 1 (got " +
                                   std::to_string(num_classes) + " and " +
                                   std::to_string(feature_dim) + ")");
  }
  int64_t triangle = 0;
  int64_t sum_size = 0;
  int64_t second_size = 0;
  if (__builtin_mul_overflow(feature_dim, feature_dim + 1, &triangle) ||
      __builtin_mul_overflow(num_classes, feature_dim * 2, &sum_size) ||
      __builtin_mul_overflow(num_classes, triangle, &second_size) ||
      second_size > std::numeric_limits<int64_t>::max() / 16) {
    return Status::ResourceExhausted("GaussianPool: " + std::to_string(num_classes) + " × " +
                                     std::to_string(feature_dim) + "² statistics are too large");
  }
  GaussianPool pool;
  pool.num_classes_ = num_classes;
  pool.feature_dim_ = feature_dim;
  pool.triangle_ = triangle / 2;
  try {
    pool.counts_.assign(static_cast<size_t>(num_classes), 0);
    pool.sum_.assign(static_cast<size_t>(sum_size), 0.0);
    // second_size = K·d(d+1) = K·triangle·2: one (hi, lo) pair per upper-triangle entry.
    pool.second_.assign(static_cast<size_t>(second_size), 0.0);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("GaussianPool: cannot allocate the accumulators of " +
                                     std::to_string(num_classes) + " × " +
                                     std::to_string(feature_dim) + "² statistics");
  }
  return pool;
}

Status GaussianPool::check(const TensorBundle& stats, int64_t num_examples) const {
  if (num_examples <= 0) {
    return Status::InvalidArgument("num_examples: must be > 0 (got " +
                                   std::to_string(num_examples) + ")");
  }
  const int64_t k = num_classes_;
  const int64_t d = feature_dim_;
  const std::vector<Expected> expected = {{kCcvrCountTensor, DType::kInt64, {k}},
                                          {kCcvrMeanTensor, DType::kFloat64, {k, d}},
                                          {kCcvrCovTensor, DType::kFloat32, {k, d, d}}};
  for (const Expected& e : expected) {
    const NamedTensor* t = stats.find(e.name);
    const std::string where = std::string("tensor \"") + e.name + "\": ";
    if (t == nullptr)
      return Status::InvalidArgument(where + "missing (expected " + spec(e.dtype, e.shape) + ")");
    if (t->dtype() != e.dtype) {
      return Status::InvalidArgument(where + "dtype " + dtype_name(t->dtype()) + " != expected " +
                                     dtype_name(e.dtype));
    }
    if (t->shape() != e.shape) {
      return Status::InvalidArgument(where + "shape " + shape_to_string(t->shape()) +
                                     " != expected " + shape_to_string(e.shape));
    }
  }
  for (const NamedTensor& t : stats) {
    if (t.name() != kCcvrCountTensor && t.name() != kCcvrMeanTensor && t.name() != kCcvrCovTensor) {
      return Status::InvalidArgument(
          "tensor \"" + t.name() + "\": not a CCVR statistics tensor (expected " +
          kCcvrCountTensor + ", " + kCcvrMeanTensor + ", " + kCcvrCovTensor + ")");
    }
  }
  const NamedTensor& count_tensor = *stats.find(kCcvrCountTensor);
  const NamedTensor& cov_tensor = *stats.find(kCcvrCovTensor);
  // The transport has refused NaN and infinities already; a statistics bundle gets the same
  // check here, because a single NaN would poison a whole class's pooled covariance.
  FEDTAIL_RETURN_IF_ERROR(check_finite(*stats.find(kCcvrMeanTensor)));
  FEDTAIL_RETURN_IF_ERROR(check_finite(cov_tensor));

  const int64_t* counts = count_tensor.data<int64_t>();
  int64_t sum = 0;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t n = counts[c];
    if (n < 0) {
      return Status::InvalidArgument(std::string("tensor \"") + kCcvrCountTensor + "\": class " +
                                     std::to_string(c) + " has a negative count (" +
                                     std::to_string(n) + ")");
    }
    if (__builtin_add_overflow(sum, n, &sum) ||
        n > std::numeric_limits<int64_t>::max() - counts_[static_cast<size_t>(c)]) {
      return Status::InvalidArgument(std::string("tensor \"") + kCcvrCountTensor +
                                     "\": the counts overflow int64");
    }
  }
  if (sum != num_examples) {
    return Status::InvalidArgument(std::string("tensor \"") + kCcvrCountTensor +
                                   "\": the counts sum to " + std::to_string(sum) +
                                   ", not num_examples = " + std::to_string(num_examples));
  }
  if (num_examples > std::numeric_limits<int64_t>::max() - total_examples_) {
    return Status::InvalidArgument("num_examples: the total example count overflows int64");
  }
  const float* cov = cov_tensor.data<float>();
  for (int64_t c = 0; c < k; ++c) {
    if (counts[c] < 2) continue;
    for (int64_t i = 0; i < d; ++i) {
      const float v = cov[(c * d + i) * d + i];
      if (v < 0) {
        return Status::InvalidArgument(std::string("tensor \"") + kCcvrCovTensor + "\": class " +
                                       std::to_string(c) + " has a negative variance (" +
                                       std::to_string(v) + ") at feature " + std::to_string(i));
      }
    }
  }
  return Status::OK();
}

Status GaussianPool::add(const TensorBundle& stats, int64_t num_examples) {
  FEDTAIL_RETURN_IF_ERROR(check(stats, num_examples));
  const int64_t d = feature_dim_;
  const int64_t* counts = stats.find(kCcvrCountTensor)->data<int64_t>();
  const double* means = stats.find(kCcvrMeanTensor)->data<double>();
  const float* covs = stats.find(kCcvrCovTensor)->data<float>();
  for (int64_t c = 0; c < num_classes_; ++c) {
    const int64_t n = counts[c];
    if (n == 0) continue;
    const double weight = static_cast<double>(n);          // N_c,k
    const double cov_weight = static_cast<double>(n - 1);  // N_c,k - 1
    const double* mu = means + c * d;
    const float* sigma = covs + c * d * d;
    double* sum = sum_.data() + c * d * 2;
    for (int64_t i = 0; i < d; ++i) add_compensated(sum + 2 * i, weight * mu[i]);
    // Each term is rounded once, the same whatever the order of the updates; only the sums see
    // the order, and they are compensated.
    double* second = second_.data() + c * triangle_ * 2;
    for (int64_t i = 0; i < d; ++i) {
      const double wi = weight * mu[i];
      for (int64_t j = i; j < d; ++j, second += 2) {
        add_compensated(second, wi * mu[j]);
        if (n >= 2) add_compensated(second, cov_weight * static_cast<double>(sigma[i * d + j]));
      }
    }
    counts_[static_cast<size_t>(c)] += n;
  }
  ++updates_;
  total_examples_ += num_examples;
  return Status::OK();
}

ClassGaussian GaussianPool::gaussian(int64_t c) const {
  FEDTAIL_CHECK(c >= 0 && c < num_classes_);
  const int64_t d = feature_dim_;
  ClassGaussian g;
  g.count = counts_[static_cast<size_t>(c)];
  if (g.count == 0) return g;
  const double n = static_cast<double>(g.count);
  const double* sum = sum_.data() + c * d * 2;
  g.mean.resize(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) g.mean[static_cast<size_t>(i)] = value_of(sum + 2 * i) / n;
  if (g.count < 2) return g;
  // Sigma = (sum_k [(N_k - 1) Sigma_k + N_k mu_k mu_k^T] - N mu mu^T) / (N - 1), with
  // N mu mu^T = S S^T / N for S = sum_k N_k mu_k.
  g.cov.resize(static_cast<size_t>(d * d));
  const double* second = second_.data() + c * triangle_ * 2;
  for (int64_t i = 0; i < d; ++i) {
    const double si = value_of(sum + 2 * i);
    for (int64_t j = i; j < d; ++j, second += 2) {
      const double sj = value_of(sum + 2 * j);
      const double v = (value_of(second) - si * sj / n) / (n - 1);
      g.cov[static_cast<size_t>(i * d + j)] = v;
      g.cov[static_cast<size_t>(j * d + i)] = v;
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Sampling

Result<GaussianSample> sample_gaussian(const std::vector<double>& mean,
                                       const std::vector<double>& cov, int64_t n, Rng& rng) {
  const int64_t d = static_cast<int64_t>(mean.size());
  if (d == 0 || static_cast<int64_t>(cov.size()) != d * d || n < 0) {
    return Status::InvalidArgument(
        "sample_gaussian: expected a mean of d >= 1 values, a d×d "
        "covariance and n >= 0 (got d = " +
        std::to_string(d) + ", " + std::to_string(cov.size()) +
        " covariance values, n = " + std::to_string(n) + ")");
  }
  if (!all_finite(mean) || !all_finite(cov)) {
    return Status::InvalidArgument("sample_gaussian: the mean or covariance is not finite");
  }
  try {
    const torch::Tensor mu =
        torch::from_blob(const_cast<double*>(mean.data()), {d}, torch::kFloat64).clone();
    torch::Tensor sigma =
        torch::from_blob(const_cast<double*>(cov.data()), {d, d}, torch::kFloat64).clone();
    sigma = (sigma + sigma.t()).mul_(0.5);

    GaussianSample out;
    torch::Tensor factor;  // L with L L^T = Sigma (or its PSD part)
    if (!sigma.ne(0).any().item<bool>()) {
      out.factor = CovFactor::kZero;
      factor = torch::zeros({d, d}, torch::kFloat64);
    } else {
      torch::Tensor l, info;
      std::tie(l, info) = torch::linalg_cholesky_ex(sigma);
      if (info.item<int64_t>() == 0) {
        out.factor = CovFactor::kCholesky;
        factor = l;
      } else {
        const double mean_diagonal = sigma.diagonal().mean().item<double>();
        if (mean_diagonal > 0) {
          const torch::Tensor eye = torch::eye(d, torch::kFloat64);
          double eps = kJitterStart * mean_diagonal;
          for (int t = 0; t < kJitterTries; ++t, eps *= 10) {
            std::tie(l, info) = torch::linalg_cholesky_ex(sigma + eps * eye);
            if (info.item<int64_t>() == 0) {
              out.factor = CovFactor::kJitteredCholesky;
              out.jitter = eps;
              factor = l;
              break;
            }
          }
        }
        if (!factor.defined()) {
          // Not positive semi-definite beyond what jitter fixes: sample its PSD part.
          torch::Tensor eigenvalues, eigenvectors;
          std::tie(eigenvalues, eigenvectors) = torch::linalg_eigh(sigma);
          out.factor = CovFactor::kEigen;
          factor = eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(0);
        }
      }
    }
    if (n == 0) {
      out.features = torch::zeros({0, d}, torch::kFloat32);
      return out;
    }
    std::vector<double> z(static_cast<size_t>(n * d));
    for (double& v : z) v = rng.normal();
    const torch::Tensor normals = torch::from_blob(z.data(), {n, d}, torch::kFloat64);
    // x = mu + L z for each row z: X = mu + Z L^T. (to() copies: nothing aliases `z` after.)
    out.features = torch::addmm(mu.unsqueeze(0).expand({n, d}), normals, factor.t())
                       .to(torch::kFloat32)
                       .contiguous();
    return out;
  } catch (const std::exception& e) {
    return torch_failure("sample_gaussian", e);
  }
}

}  // namespace fedtail::strategies
