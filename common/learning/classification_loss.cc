#include "common/learning/classification_loss.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <limits>

namespace fedtail {

namespace {

namespace F = torch::nn::functional;

Status check_counts(const std::vector<int64_t>& counts, int64_t num_classes, const char* whose) {
  if (static_cast<int64_t>(counts.size()) != num_classes) {
    return Status::InvalidArgument(std::string("config.local.loss: the ") + whose +
                                   " class counts have " + std::to_string(counts.size()) +
                                   " entries, the model has " + std::to_string(num_classes) +
                                   " classes");
  }
  int64_t total = 0;
  for (int64_t n : counts) {
    if (n < 0) {
      return Status::InvalidArgument(std::string("config.local.loss: a negative ") + whose +
                                     " class count (" + std::to_string(n) + ")");
    }
    total += n;
  }
  if (total == 0) {
    return Status::InvalidArgument(std::string("config.local.loss: the ") + whose +
                                   " class counts are all 0");
  }
  return Status::OK();
}

}  // namespace

Result<ClassificationLoss> ClassificationLoss::create(const LocalLossOptions& options,
                                                      int64_t num_classes,
                                                      const std::vector<int64_t>& client_counts,
                                                      const std::vector<int64_t>& global_counts,
                                                      torch::Device device) {
  using Kind = LocalLossOptions::Kind;
  ClassificationLoss loss;
  loss.kind_ = options.kind;
  loss.gamma_ = options.gamma;
  if (options.kind != Kind::kBalancedSoftmax && options.kind != Kind::kClassWeighted) return loss;
  const std::vector<int64_t>& counts = options.global_counts ? global_counts : client_counts;
  FEDTAIL_RETURN_IF_ERROR(
      check_counts(counts, num_classes, options.global_counts ? "global" : "client's"));
  try {
    if (options.kind == Kind::kBalancedSoftmax) {
      std::vector<float> adjust;
      for (int64_t n : counts) {
        adjust.push_back(n > 0 ? static_cast<float>(options.tau * std::log(static_cast<double>(n)))
                               : -std::numeric_limits<float>::infinity());
      }
      loss.adjustment_ = torch::tensor(adjust).to(device).unsqueeze(0);
    } else {
      int64_t total = 0, present = 0;
      for (int64_t n : counts) {
        total += n;
        present += n > 0 ? 1 : 0;
      }
      std::vector<float> weights;
      for (int64_t n : counts) {
        weights.push_back(n > 0 ? static_cast<float>(static_cast<double>(total) /
                                                     (static_cast<double>(present) * n))
                                : 0.0f);
      }
      loss.weights_ = torch::tensor(weights).to(device);
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("ClassificationLoss: ") + e.what());
  }
  return loss;
}

torch::Tensor ClassificationLoss::operator()(const torch::Tensor& logits,
                                             const torch::Tensor& labels) const {
  using Kind = LocalLossOptions::Kind;
  switch (kind_) {
    case Kind::kCrossEntropy:
      return F::cross_entropy(logits, labels);
    case Kind::kBalancedSoftmax:
      return F::cross_entropy(logits + adjustment_, labels);
    case Kind::kFocal: {
      const torch::Tensor log_p = F::log_softmax(logits, /*dim=*/1).gather(1, labels.unsqueeze(1));
      const torch::Tensor focus = (1 - log_p.exp()).pow(gamma_);
      return -(focus * log_p).mean();
    }
    case Kind::kClassWeighted:
      return F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().weight(weights_));
  }
  return F::cross_entropy(logits, labels);
}

Status require_cross_entropy(const LocalTrainOptions& options, const std::string& strategy) {
  if (options.loss.kind == LocalLossOptions::Kind::kCrossEntropy) return Status::OK();
  return Status::InvalidArgument(
      "config.local.loss: " + strategy + " trains with its own loss, not \"" +
      loss_kind_name(options.loss.kind) + "\"; remove the key or set it to \"ce\"");
}

}  // namespace fedtail
