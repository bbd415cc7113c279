#include "common/learning/feature_cache.h"

#include <torch/torch.h>

#include <algorithm>
#include <string>

namespace fedtail {

Result<torch::Tensor> FeatureCache::predict_with(Model& model, const PayloadDigest& version,
                                                 const std::vector<int64_t>& rows,
                                                 const LogitsFn& logits_fn,
                                                 const AugmentOptions& input, torch::Device device,
                                                 int batch_size) {
  if (batch_size < 1) {
    return Status::InvalidArgument("predict (feature cache): batch_size must be >= 1 (got " +
                                   std::to_string(batch_size) + ")");
  }
  const int64_t n = source_->size();
  for (int64_t row : rows) {
    if (row < 0 || row >= n) {
      return Status::InvalidArgument("predict (feature cache): row " + std::to_string(row) +
                                     " is outside the test set of " + std::to_string(n));
    }
  }
  if (rows.empty()) return torch::empty({0}, torch::TensorOptions().dtype(torch::kInt64));
  if (!has_version_ || version != version_ || features_.size(1) != model->feature_dim()) {
    version_ = version;
    has_version_ = true;
    features_ = torch::empty({n, model->feature_dim()});
    have_.assign(static_cast<size_t>(n), 0);
  }
  // The rows not computed yet under this version, each once, in order of first use.
  std::vector<int64_t> missing;
  for (int64_t row : rows) {
    if (have_[row] == 0) {
      have_[row] = 2;  // queued
      missing.push_back(row);
    }
  }
  reused_rows_ += static_cast<int64_t>(rows.size() - missing.size());
  if (!missing.empty()) {
    Result<torch::Tensor> fresh =
        extract_features(model, source_->subset(missing), input, device, batch_size);
    Status stored = fresh.status();
    if (stored.ok()) {
      try {
        features_.index_copy_(0, torch::tensor(missing, torch::kInt64), *fresh);
      } catch (const std::exception& e) {
        stored = Status::Internal(std::string("predict (feature cache): ") + e.what());
      }
    }
    if (!stored.ok()) {
      for (int64_t row : missing) have_[row] = 0;
      return stored;
    }
    for (int64_t row : missing) have_[row] = 1;
    computed_rows_ += static_cast<int64_t>(missing.size());
  }
  try {
    torch::NoGradGuard no_grad;
    model->to(device);
    const torch::Tensor index = torch::tensor(rows, torch::kInt64);
    std::vector<torch::Tensor> predictions;
    for (int64_t start = 0; start < static_cast<int64_t>(rows.size()); start += batch_size) {
      const int64_t size = std::min<int64_t>(batch_size, static_cast<int64_t>(rows.size()) - start);
      torch::Tensor features = features_.index_select(0, index.narrow(0, start, size)).to(device);
      // The same padding as predict_with's last batch, so that the head sees the same rows.
      predictions.push_back(apply_padded(features, logits_fn).argmax(/*dim=*/1));
    }
    return torch::cat(predictions, /*dim=*/0).to(torch::kCPU);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("predict (feature cache): ") + e.what());
  }
}

}  // namespace fedtail
