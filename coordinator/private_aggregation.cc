#include "coordinator/private_aggregation.h"

#include <cmath>

#include "common/privacy/quantize.h"
#include "common/wire/float_elements.h"
#include "strategies/robust_aggregation.h"

namespace fedtail::coordinator {
namespace {

// Folds a client's "loss" metric into an example-weighted sum.
void add_loss(const strategies::ClientUpdate& update, double* sum, double* weight) {
  const nlohmann::json& m = update.metrics;
  if (!m.is_object()) return;
  auto loss = m.find("loss");
  if (loss == m.end() || !loss->is_number()) return;
  const double value = loss->get<double>();
  if (!std::isfinite(value)) return;
  *sum += value * static_cast<double>(update.num_examples);
  *weight += static_cast<double>(update.num_examples);
}

Status check_new(const std::map<std::string, int64_t>& seen,
                 const strategies::ClientUpdate& update) {
  if (seen.count(update.client_id) != 0) {
    return Status::InvalidArgument("client " + update.client_id +
                                   " sent a second update this round");
  }
  if (update.num_examples <= 0) {
    return Status::InvalidArgument("num_examples must be > 0 (got " +
                                   std::to_string(update.num_examples) + ")");
  }
  return Status::OK();
}

}  // namespace

SecureSum::SecureSum(const TensorBundle& base)
    : sum_(static_cast<size_t>(privacy::secure_words(base)), 0) {
  Result<TensorBundle> layout = privacy::masked_layout(base);
  FEDTAIL_CHECK(layout.ok());  // base's own names and shapes
  layout_ = std::move(layout).value();
}

Status SecureSum::add(strategies::ClientUpdate update) {
  FEDTAIL_RETURN_IF_ERROR(check_new(contributors_, update));
  const TensorBundle& masked = update.bundle;
  bool same = masked.size() == layout_.size();
  for (size_t i = 0; same && i < masked.size(); ++i) {
    same = masked.at(i).name() == layout_.at(i).name() && masked.at(i).dtype() == DType::kInt32 &&
           masked.at(i).shape() == layout_.at(i).shape();
  }
  if (!same) {
    return Status::InvalidArgument(
        "masked input: not the masked layout of the model (int32 tensors named and shaped as "
        "its floating-point tensors, in order)");
  }
  FEDTAIL_RETURN_IF_ERROR(privacy::add_words(update.bundle, sum_.data(), sum_.size()));
  contributors_[update.client_id] = update.num_examples;
  add_loss(update, &loss_sum_, &loss_weight_);
  return Status::OK();
}

Result<nlohmann::json> SecureSum::finish(const std::vector<strategies::ClientFailure>&) {
  return Status::Internal("SecureSum::finish: the round engine unmasks the sum itself");
}

nlohmann::json SecureSum::mean_loss() const {
  return loss_weight_ > 0 ? nlohmann::json(loss_sum_ / loss_weight_) : nlohmann::json();
}

ClippedSum::ClippedSum(std::shared_ptr<const TensorBundle> base, double clip_norm)
    : base_(std::move(base)),
      clip_norm_(clip_norm),
      sum_(static_cast<size_t>(privacy::secure_words(*base_)), 0.0) {}

Status ClippedSum::add(strategies::ClientUpdate update) {
  FEDTAIL_RETURN_IF_ERROR(check_new(contributors_, update));
  FEDTAIL_ASSIGN_OR_RETURN(double norm,
                           strategies::clip_update(*base_, &update.bundle, clip_norm_));
  size_t at = 0;
  for (const NamedTensor& g : *base_) {
    if (!dtype_is_floating(g.dtype())) continue;
    const NamedTensor& u = *update.bundle.find(g.name());  // clip_update checked compatibility
    for (int64_t i = 0; i < g.numel(); ++i) {
      sum_[at++] += load_float(g.dtype(), u.bytes(), i) - load_float(g.dtype(), g.bytes(), i);
    }
  }
  if (norm <= clip_norm_) ++unclipped_;
  max_norm_ = std::max(max_norm_, norm);
  contributors_[update.client_id] = update.num_examples;
  add_loss(update, &loss_sum_, &loss_weight_);
  return Status::OK();
}

Result<nlohmann::json> ClippedSum::finish(const std::vector<strategies::ClientFailure>&) {
  return Status::Internal("ClippedSum::finish: the round engine noises the sum itself");
}

Result<TensorBundle> ClippedSum::noised_mean(double noise_stddev, double denominator,
                                             Rng& rng) const {
  if (!(denominator > 0)) return Status::InvalidArgument("noised_mean: denominator must be > 0");
  TensorBundle out = base_->clone();
  size_t at = 0;
  for (NamedTensor& t : out) {
    if (!dtype_is_floating(t.dtype())) continue;
    uint8_t* bytes = t.mutable_bytes();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double noised = sum_[at++] + noise_stddev * rng.normal();
      store_float(t.dtype(), bytes, i, load_float(t.dtype(), bytes, i) + noised / denominator);
    }
  }
  return out;
}

nlohmann::json ClippedSum::mean_loss() const {
  return loss_weight_ > 0 ? nlohmann::json(loss_sum_ / loss_weight_) : nlohmann::json();
}

}  // namespace fedtail::coordinator
