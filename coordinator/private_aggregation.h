// The coordinator's own aggregations for secure aggregation and central differential privacy
// (coordinator/round_engine_private.cc): they fold the fit phase's uploads in place of the
// strategy's Aggregation, and hand the strategy one update at the end (the round's mean; see
// ServerStrategy::supports_mean_aggregation). Both keep O(model) memory whatever the number of
// clients.
//
// Threading: add() is called by the round engine under its fold lock (one at a time); the other
// methods on the engine thread after the phase has closed.
#ifndef FEDTAIL_COORDINATOR_PRIVATE_AGGREGATION_H_
#define FEDTAIL_COORDINATOR_PRIVATE_AGGREGATION_H_

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"

namespace fedtail::coordinator {

// Sums the masked inputs of secure aggregation modulo 2^32 as they arrive (common/privacy/
// quantize.h: add_words). Never sees an unmasked input.
class SecureSum final : public strategies::Aggregation {
 public:
  // `base` is the round's task bundle (its floating-point tensors are the secure input's layout).
  explicit SecureSum(const TensorBundle& base);

  // Adds a masked upload: int32 tensors laid out as masked_layout(base) (the engine checks the
  // header against it before decoding; checked again here, before anything is added). A second
  // upload of one client, or num_examples <= 0, is refused; a refused upload has no effect.
  Status add(strategies::ClientUpdate update) override;
  // Not used: the engine unmasks sum() and hands the strategy the mean.
  Result<nlohmann::json> finish(const std::vector<strategies::ClientFailure>& failures) override;

  // The clients whose masked input is in the sum, with their num_examples.
  const std::map<std::string, int64_t>& contributors() const { return contributors_; }
  uint32_t* sum() { return sum_.data(); }
  size_t words() const { return sum_.size(); }
  // The example-weighted mean of the clients' "loss" metrics, or null.
  nlohmann::json mean_loss() const;

 private:
  TensorBundle layout_;  // masked_layout(base): what every upload must be, tensor for tensor
  std::vector<uint32_t> sum_;
  std::map<std::string, int64_t> contributors_;
  double loss_sum_ = 0;
  double loss_weight_ = 0;
};

// Central DP-FedAvg (McMahan et al. 2018): clips each update's change from `base` to L2 norm
// `clip_norm` (strategies/robust_aggregation.h: clip_update) and sums the clipped changes in
// double.
class ClippedSum final : public strategies::Aggregation {
 public:
  ClippedSum(std::shared_ptr<const TensorBundle> base, double clip_norm);

  Status add(strategies::ClientUpdate update) override;
  Result<nlohmann::json> finish(const std::vector<strategies::ClientFailure>& failures) override;

  // The mean to hand the strategy: base + (sum + N(0, (noise_stddev)^2) per value) / denominator,
  // floating-point tensors only (others keep the base's values). `rng` draws the noise.
  Result<TensorBundle> noised_mean(double noise_stddev, double denominator, Rng& rng) const;

  const std::map<std::string, int64_t>& contributors() const { return contributors_; }
  // Updates whose change was within clip_norm (not scaled down).
  int unclipped() const { return unclipped_; }
  // The largest change norm seen (before clipping); 0 when none.
  double max_norm() const { return max_norm_; }
  nlohmann::json mean_loss() const;

 private:
  std::shared_ptr<const TensorBundle> base_;
  double clip_norm_;
  std::vector<double> sum_;  // the clipped changes of the floating-point tensors, in order
  std::map<std::string, int64_t> contributors_;
  int unclipped_ = 0;
  double max_norm_ = 0;
  double loss_sum_ = 0;
  double loss_weight_ = 0;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_PRIVATE_AGGREGATION_H_
