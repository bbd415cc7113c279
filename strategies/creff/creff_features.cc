// CReFF's federated features (creff.h): the classifier gradients, the gradient-matching distance,
// feature matching, classifier re-training, and the pool of the clients' real gradients.
#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "strategies/creff/creff.h"

namespace fedtail::strategies {

namespace {

// The code's eps in the cosine's denominator (Gradient_matching_loss.py, distance_wb).
constexpr double kCosineEps = 1e-6;

std::string spec(DType dtype, const std::vector<int64_t>& shape) {
  return std::string(dtype_name(dtype)) + " " + shape_to_string(shape);
}

// kInvalidArgument unless `bundle` holds `name` with `dtype` and `shape`.
Status check_tensor(const TensorBundle& bundle, const char* name, DType dtype,
                    const std::vector<int64_t>& shape) {
  const NamedTensor* t = bundle.find(name);
  if (t == nullptr) {
    return Status::InvalidArgument(std::string("tensor \"") + name + "\": missing (expected " +
                                   spec(dtype, shape) + ")");
  }
  if (t->dtype() != dtype || t->shape() != shape) {
    return Status::InvalidArgument(std::string("tensor \"") + name +
                                   "\": " + spec(t->dtype(), t->shape()) + " != expected " +
                                   spec(dtype, shape));
  }
  return Status::OK();
}

// Σ over rows (last dim) of 1 − ⟨r, s⟩ / (‖r‖·‖s‖ + eps): [..., rows, n] → [...].
torch::Tensor cosine_rows_distance(const torch::Tensor& real, const torch::Tensor& syn) {
  const torch::Tensor dot = (real * syn).sum(-1);
  const torch::Tensor norms = real.norm(2, {-1}) * syn.norm(2, {-1}) + kCosineEps;
  return (1 - dot / norms).sum(-1);
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> default_linear(int64_t out_features, int64_t in_features,
                                                       Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  auto draw = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>((2 * rng.uniform() - 1) * bound);
    return torch::tensor(v, torch::kFloat32);
  };
  torch::Tensor weight = draw(out_features * in_features).view({out_features, in_features});
  torch::Tensor bias = draw(out_features);
  return {weight, bias};
}

std::pair<torch::Tensor, torch::Tensor> class_classifier_gradients(const torch::Tensor& features,
                                                                   const torch::Tensor& classes,
                                                                   const torch::Tensor& weight,
                                                                   const torch::Tensor& bias) {
  TORCH_CHECK(features.dim() == 3 && features.size(1) >= 1, "features must be [m, n, d], n >= 1");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) == features.size(0),
              "classes must be [m] for features [m, n, d]");
  const int64_t k = weight.size(0);
  const double n = static_cast<double>(features.size(1));
  // d CE / d logits = softmax − onehot, divided by n for the mean over the rows.
  const torch::Tensor probs = torch::softmax(torch::matmul(features, weight.t()) + bias, -1);
  const torch::Tensor onehot =
      torch::one_hot(classes.to(torch::kInt64), k).to(probs.scalar_type()).unsqueeze(1);
  const torch::Tensor delta = probs - onehot;  // [m, n, K]
  const torch::Tensor grad_weight =
      torch::matmul(delta.transpose(1, 2), features) / n;  // [m, K, d]
  const torch::Tensor grad_bias = delta.mean(1);           // [m, K]
  return {grad_weight, grad_bias};
}

torch::Tensor gradient_match_distance(const torch::Tensor& real_weight,
                                      const torch::Tensor& real_bias,
                                      const torch::Tensor& syn_weight,
                                      const torch::Tensor& syn_bias) {
  TORCH_CHECK(real_weight.sizes() == syn_weight.sizes() && real_weight.dim() == 3,
              "weight gradients must be [m, K, d] alike");
  TORCH_CHECK(real_bias.sizes() == syn_bias.sizes() && real_bias.dim() == 2,
              "bias gradients must be [m, K] alike");
  // The bias vector is one row: [m, 1, K].
  return cosine_rows_distance(real_weight, syn_weight) +
         cosine_rows_distance(real_bias.unsqueeze(1), syn_bias.unsqueeze(1));
}

Result<MatchResult> match_features(const torch::Tensor& features, int64_t per_class,
                                   const std::vector<int64_t>& classes,
                                   const torch::Tensor& real_weight, const torch::Tensor& real_bias,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   int steps, double lr) {
  if (steps < 0 || !std::isfinite(lr) || lr <= 0) {
    return Status::InvalidArgument("match_features: steps must be >= 0 and lr > 0 (got " +
                                   std::to_string(steps) + " and " + std::to_string(lr) + ")");
  }
  try {
    if (!features.defined() || !weight.defined() || !bias.defined() || weight.dim() != 2 ||
        bias.dim() != 1 || bias.size(0) != weight.size(0) || per_class < 1 || features.dim() != 2 ||
        features.size(1) != weight.size(1) || features.size(0) != weight.size(0) * per_class) {
      return Status::InvalidArgument(
          "match_features: expected features [K·per_class, d], weight [K, d], bias [K]");
    }
    const int64_t k = weight.size(0);
    const int64_t d = weight.size(1);
    const int64_t m = static_cast<int64_t>(classes.size());
    for (int64_t i = 0; i < m; ++i) {
      const int64_t c = classes[static_cast<size_t>(i)];
      if (c < 0 || c >= k || (i > 0 && c <= classes[static_cast<size_t>(i - 1)])) {
        return Status::InvalidArgument(
            "match_features: classes must be strictly increasing in [0, " + std::to_string(k) +
            ")");
      }
    }
    if (!real_weight.defined() || !real_bias.defined() ||
        real_weight.sizes() != torch::IntArrayRef({m, k, d}) ||
        real_bias.sizes() != torch::IntArrayRef({m, k})) {
      return Status::InvalidArgument(
          "match_features: expected real gradients [m, K, d] and [m, K] for m classes");
    }
    MatchResult result;
    result.matched_classes = m;
    torch::Tensor f = features.detach().to(torch::kCPU, torch::kFloat32).clone();
    if (m == 0) {
      result.features = f;
      return result;
    }
    const torch::Tensor w = weight.detach().to(torch::kCPU, torch::kFloat32);
    const torch::Tensor b = bias.detach().to(torch::kCPU, torch::kFloat32);
    const torch::Tensor rw = real_weight.detach().to(torch::kCPU, torch::kFloat32);
    const torch::Tensor rb = real_bias.detach().to(torch::kCPU, torch::kFloat32);
    const torch::Tensor index = torch::tensor(classes, torch::kInt64);

    // The summed distance of the features `x` (a leaf of f's shape).
    auto distance = [&](const torch::Tensor& x) {
      const torch::Tensor blocks = x.view({k, per_class, d}).index_select(0, index);
      auto [syn_weight, syn_bias] = class_classifier_gradients(blocks, index, w, b);
      return gradient_match_distance(rw, rb, syn_weight, syn_bias).sum();
    };
    for (int step = 0; step < steps; ++step) {
      f.set_requires_grad(true);
      const torch::Tensor loss = distance(f);
      const torch::Tensor grad = torch::autograd::grad({loss}, {f})[0];
      if (step == 0) result.first_distance = loss.item<double>();
      f = f.detach();
      f.sub_(grad, lr);
    }
    {
      torch::NoGradGuard no_grad;
      result.last_distance = distance(f).item<double>();
    }
    if (steps == 0) result.first_distance = result.last_distance;
    if (!std::isfinite(result.first_distance) || !std::isfinite(result.last_distance)) {
      return Status::Internal("match_features: the distance is not finite (" +
                              std::to_string(result.first_distance) + " → " +
                              std::to_string(result.last_distance) + ")");
    }
    result.features = f;
    return result;
  } catch (const std::exception& e) {
    return torch_failure("match_features", e);
  }
}

Result<CalibrationResult> retrain_classifier(const torch::Tensor& features, int64_t per_class,
                                             int64_t num_classes, const CreffOptions& options,
                                             Rng& rng) {
  if (num_classes < 1 || per_class < 1 || !features.defined() || features.dim() != 2 ||
      features.size(0) != num_classes * per_class || features.size(1) < 1) {
    return Status::InvalidArgument(
        "retrain_classifier: expected features [K·per_class, d] with K, per_class, d >= 1");
  }
  try {
    auto [weight, bias] = default_linear(num_classes, features.size(1), rng);
    const torch::Tensor labels =
        torch::arange(num_classes, torch::kInt64).repeat_interleave(per_class);
    CalibrationOptions calibration;
    calibration.lr = options.retrain_lr;
    calibration.epochs = options.retrain_epochs;
    calibration.batch_size = options.retrain_batch_size;
    return calibrate_classifier(weight, bias, features.detach(), labels, calibration, rng);
  } catch (const std::exception& e) {
    return torch_failure("retrain_classifier", e);
  }
}

// ---------------------------------------------------------------------------------------------
// ClassGradientPool

Result<ClassGradientPool> ClassGradientPool::create(int64_t num_classes, int64_t feature_dim) {
  if (num_classes < 1 || feature_dim < 1) {
    return Status::InvalidArgument(
        "ClassGradientPool: num_classes and feature_dim must be >= 1 (got " +
        std::to_string(num_classes) + " and " + std::to_string(feature_dim) + ")");
  }
  ClassGradientPool pool;
  pool.num_classes_ = num_classes;
  pool.feature_dim_ = feature_dim;
  pool.weight_sums_.resize(static_cast<size_t>(num_classes));
  pool.bias_sums_.resize(static_cast<size_t>(num_classes));
  pool.holders_.assign(static_cast<size_t>(num_classes), 0);
  return pool;
}

Status ClassGradientPool::check(const TensorBundle& upload) const {
  for (const NamedTensor& t : upload) {
    if (t.name() != kCreffClassesTensor && t.name() != kCreffGradWeightTensor &&
        t.name() != kCreffGradBiasTensor) {
      return Status::InvalidArgument("tensor \"" + t.name() + "\": not a CReFF gradient tensor");
    }
  }
  const int64_t k = num_classes_;
  const NamedTensor* classes = upload.find(kCreffClassesTensor);
  if (classes == nullptr) {
    return Status::InvalidArgument(std::string("tensor \"") + kCreffClassesTensor +
                                   "\": missing (expected int64 [m], the classes held)");
  }
  if (classes->dtype() != DType::kInt64 || classes->dim() != 1 || classes->numel() > k) {
    return Status::InvalidArgument(std::string("tensor \"") + kCreffClassesTensor +
                                   "\": " + spec(classes->dtype(), classes->shape()) +
                                   " != expected int64 [m], m <= " + std::to_string(k));
  }
  const int64_t m = classes->numel();
  const int64_t* c = classes->data<int64_t>();
  for (int64_t i = 0; i < m; ++i) {
    if (c[i] < 0 || c[i] >= k) {
      return Status::InvalidArgument(std::string("tensor \"") + kCreffClassesTensor + "\": class " +
                                     std::to_string(c[i]) + " is outside [0, " + std::to_string(k) +
                                     ")");
    }
    if (i > 0 && c[i] <= c[i - 1]) {
      return Status::InvalidArgument(std::string("tensor \"") + kCreffClassesTensor +
                                     "\": classes not strictly increasing at index " +
                                     std::to_string(i));
    }
  }
  FEDTAIL_RETURN_IF_ERROR(
      check_tensor(upload, kCreffGradWeightTensor, DType::kFloat32, {m, k, feature_dim_}));
  FEDTAIL_RETURN_IF_ERROR(check_tensor(upload, kCreffGradBiasTensor, DType::kFloat32, {m, k}));
  FEDTAIL_RETURN_IF_ERROR(check_finite(*upload.find(kCreffGradWeightTensor)));
  return check_finite(*upload.find(kCreffGradBiasTensor));
}

Status ClassGradientPool::add(const TensorBundle& upload) {
  FEDTAIL_RETURN_IF_ERROR(check(upload));
  try {
    const NamedTensor& classes = *upload.find(kCreffClassesTensor);
    const torch::Tensor weight = to_torch(*upload.find(kCreffGradWeightTensor));
    const torch::Tensor bias = to_torch(*upload.find(kCreffGradBiasTensor));
    for (int64_t i = 0; i < classes.numel(); ++i) {
      const size_t c = static_cast<size_t>(classes.data<int64_t>()[i]);
      const torch::Tensor w = weight[i].to(torch::kFloat64);
      const torch::Tensor b = bias[i].to(torch::kFloat64);
      if (holders_[c] == 0) {
        weight_sums_[c] = w;
        bias_sums_[c] = b;
      } else {
        weight_sums_[c].add_(w);
        bias_sums_[c].add_(b);
      }
      ++holders_[c];
    }
    ++uploads_;
    return Status::OK();
  } catch (const std::exception& e) {
    return torch_failure("ClassGradientPool::add", e);
  }
}

Result<ClassGradientPool::Means> ClassGradientPool::means() const {
  try {
    Means out;
    std::vector<torch::Tensor> weights, biases;
    for (int64_t c = 0; c < num_classes_; ++c) {
      const size_t i = static_cast<size_t>(c);
      if (holders_[i] == 0) continue;
      const double n = static_cast<double>(holders_[i]);
      out.classes.push_back(c);
      weights.push_back((weight_sums_[i] / n).to(torch::kFloat32));
      biases.push_back((bias_sums_[i] / n).to(torch::kFloat32));
    }
    if (out.classes.empty()) {
      out.weight = torch::zeros({0, num_classes_, feature_dim_}, torch::kFloat32);
      out.bias = torch::zeros({0, num_classes_}, torch::kFloat32);
    } else {
      out.weight = torch::stack(weights);
      out.bias = torch::stack(biases);
    }
    return out;
  } catch (const std::exception& e) {
    return torch_failure("ClassGradientPool::means", e);
  }
}

}  // namespace fedtail::strategies
