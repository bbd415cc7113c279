// FeatureCache: the backbone features of one shared image set under one model version, computed
// once for all the virtual clients of a worker process that evaluate that backbone.
//
// Why: a simulation worker evaluates its clients one after another, each on a personalised test
// set drawn from the same balanced test set (common/data/federated_data.h) and, for the strategies
// whose clients evaluate the global backbone unchanged (FedAvg, FedProx, FedLoGe: only the head
// differs per client), with the same backbone weights. The sets overlap heavily: a long-tailed
// head class is drawn thousands of times from 1,000 test images. Computing each image's features
// once per model version removes the repeated backbone passes; each client's head is still applied
// to its own rows.
//
// Contract: predict_with(model, version, rows, logits_fn, ...) returns what
// predict_with(model, source.subset(rows), logits_fn, ...) (common/learning/train_loop.h) returns,
// bit for bit, provided the backbone's output for one example does not depend on the other examples
// of its batch (true in eval mode for fedtail's models on LibTorch's CPU kernels; tested in
// feature_cache_test), because the head sees the same rows in the same batches of `batch_size`.
// Features live on the CPU (source size × feature_dim floats).
//
// Thread-compatible: one thread at a time (a worker runs one task at a time).
#ifndef FEDTAIL_COMMON_LEARNING_FEATURE_CACHE_H_
#define FEDTAIL_COMMON_LEARNING_FEATURE_CACHE_H_

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/data/dataset.h"
#include "common/learning/models.h"
#include "common/learning/train_loop.h"
#include "common/wire/payload_digest.h"

namespace fedtail {

class FeatureCache {
 public:
  // `source` is borrowed and must outlive the cache.
  explicit FeatureCache(const Dataset* source) : source_(source) {}

  // Arg-max of logits_fn over the backbone features of rows `rows` of the source, in that order
  // (int64 N on the CPU), where `model`'s backbone holds the weights identified by `version` (e.g.
  // payload_digest of the bundle loaded into it: the caller vouches for that). Rows computed under
  // the same version, by any earlier call, are reused; a new version drops them all. Errors:
  // kInvalidArgument for a row outside the source or batch_size < 1; those of extract_features;
  // kInternal for a LibTorch failure in logits_fn.
  Result<torch::Tensor> predict_with(Model& model, const PayloadDigest& version,
                                     const std::vector<int64_t>& rows, const LogitsFn& logits_fn,
                                     const AugmentOptions& input, torch::Device device,
                                     int batch_size);

  // Rows whose features were computed / reused, since construction.
  int64_t computed_rows() const { return computed_rows_; }
  int64_t reused_rows() const { return reused_rows_; }

 private:
  const Dataset* const source_;
  PayloadDigest version_{};
  bool has_version_ = false;
  torch::Tensor features_;     // float source size × feature_dim on the CPU; valid where `have_`
  std::vector<uint8_t> have_;  // per source row: features_ holds it under version_
  int64_t computed_rows_ = 0;
  int64_t reused_rows_ = 0;
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_FEATURE_CACHE_H_
