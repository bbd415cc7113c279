#include "strategies/fedsa/anchors.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace fedtail::strategies {
namespace {

constexpr double kBatchNormEps = 1e-5;

// Draws a Linear(d, d) as PyTorch initialises it: weight then bias, each U(±1/√d).
void draw_linear(int64_t d, Rng& rng, std::vector<double>* weight, std::vector<double>* bias) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  weight->resize(static_cast<size_t>(d * d));
  bias->resize(static_cast<size_t>(d));
  for (double& w : *weight) w = (2 * rng.uniform() - 1) * bound;
  for (double& b : *bias) b = (2 * rng.uniform() - 1) * bound;
}

// out = ReLU(BN(x·Wᵀ + b)) for x of c rows × d, BN in training mode over the rows.
std::vector<double> linear_bn_relu(const std::vector<double>& x, int64_t c, int64_t d,
                                   const std::vector<double>& weight,
                                   const std::vector<double>& bias) {
  std::vector<double> h(static_cast<size_t>(c * d));
  for (int64_t i = 0; i < c; ++i) {
    const double* row = x.data() + i * d;
    for (int64_t o = 0; o < d; ++o) {
      const double* w = weight.data() + o * d;
      double sum = bias[static_cast<size_t>(o)];
      for (int64_t k = 0; k < d; ++k) sum += row[k] * w[k];
      h[static_cast<size_t>(i * d + o)] = sum;
    }
  }
  for (int64_t o = 0; o < d; ++o) {
    double mean = 0;
    for (int64_t i = 0; i < c; ++i) mean += h[static_cast<size_t>(i * d + o)];
    mean /= static_cast<double>(c);
    double var = 0;
    for (int64_t i = 0; i < c; ++i) {
      const double diff = h[static_cast<size_t>(i * d + o)] - mean;
      var += diff * diff;
    }
    var /= static_cast<double>(c);  // biased, as BatchNorm normalises in training mode
    const double scale = 1.0 / std::sqrt(var + kBatchNormEps);
    for (int64_t i = 0; i < c; ++i) {
      double& v = h[static_cast<size_t>(i * d + o)];
      v = std::max(0.0, (v - mean) * scale);
    }
  }
  return h;
}

}  // namespace

Result<std::vector<float>> build_semantic_anchors(int64_t num_classes, int64_t feature_dim,
                                                  Rng& rng) {
  if (num_classes < 2) {
    return Status::InvalidArgument("fedsa anchors: need at least 2 classes (got " +
                                   std::to_string(num_classes) +
                                   "): BatchNorm over one row is undefined");
  }
  if (feature_dim < 1) {
    return Status::InvalidArgument("fedsa anchors: feature_dim must be >= 1 (got " +
                                   std::to_string(feature_dim) + ")");
  }
  const int64_t c = num_classes, d = feature_dim;
  std::vector<double> r(static_cast<size_t>(c * d));
  for (double& v : r) v = rng.normal();
  std::vector<double> w1, b1, w2, b2;
  draw_linear(d, rng, &w1, &b1);
  draw_linear(d, rng, &w2, &b2);
  const std::vector<double> h = linear_bn_relu(r, c, d, w1, b1);
  const std::vector<double> a = linear_bn_relu(h, c, d, w2, b2);
  return std::vector<float>(a.begin(), a.end());
}

double update_anchors(std::vector<float>* anchors, const PrototypeSet& global, double beta) {
  const int64_t d = global.feature_dim;
  double largest = 0;
  for (int64_t c = 0; c < global.num_classes; ++c) {
    if (!global.present(c)) continue;
    float* a = anchors->data() + c * d;
    const float* p = global.row(c);
    double squared = 0;
    for (int64_t k = 0; k < d; ++k) {
      const float next = static_cast<float>(beta * static_cast<double>(a[k]) +
                                            (1 - beta) * static_cast<double>(p[k]));
      const double diff = static_cast<double>(next) - static_cast<double>(a[k]);
      squared += diff * diff;
      a[k] = next;
    }
    largest = std::max(largest, std::sqrt(squared));
  }
  return largest;
}

PrototypeSet anchor_set(const std::vector<float>& anchors, int64_t num_classes,
                        int64_t feature_dim) {
  PrototypeSet set;
  set.num_classes = num_classes;
  set.feature_dim = feature_dim;
  set.rows = anchors;
  set.counts.assign(static_cast<size_t>(num_classes), 1);
  return set;
}

}  // namespace fedtail::strategies
