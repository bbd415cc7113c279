// ClassificationLoss: the loss of local training that config.local.loss chooses (cross-entropy,
// balanced softmax, focal, class-weighted CE), bound to the class counts it needs.
//
//   ce                CE(z, y), the mean over the batch.
//   balanced_softmax  CE(z + tau · log n, y) (Ren et al., "Balanced Meta-Softmax", NeurIPS 2020;
//                     logit adjustment, Menon et al., ICLR 2021). log 0 = -inf: a class with no
//                     examples gets no probability and no gradient. The model is scored on its
//                     plain logits.
//   focal             mean of -(1 - p_y)^gamma · log p_y (Lin et al., ICCV 2017), without the
//                     alpha weights.
//   class_weighted    CE with weights w_c = n / (C · n_c) over the C classes with n_c > 0 (0 for
//                     the others), as a weighted mean: Σ w_{y_i} CE_i / Σ w_{y_i} (PyTorch's
//                     CrossEntropyLoss(weight=w)).
// n_c are the client's own training counts, or the run's global training counts with
// "counts": "global".
//
// Thread-safety: immutable after create(); operator() may run on several threads.
#ifndef FEDTAIL_COMMON_LEARNING_CLASSIFICATION_LOSS_H_
#define FEDTAIL_COMMON_LEARNING_CLASSIFICATION_LOSS_H_

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/learning/train_options.h"

namespace fedtail {

class ClassificationLoss {
 public:
  // Cross-entropy.
  ClassificationLoss() = default;

  // The loss `options` describes over `num_classes` classes, its tensors on `device`.
  // `client_counts`: the client's per-class training counts; `global_counts`: the run's. Only the
  // counts the kind uses are read. kInvalidArgument when they are needed and their length is not
  // num_classes, when a count is negative, or when every count is 0; kInternal for a LibTorch
  // failure.
  static Result<ClassificationLoss> create(const LocalLossOptions& options, int64_t num_classes,
                                           const std::vector<int64_t>& client_counts,
                                           const std::vector<int64_t>& global_counts,
                                           torch::Device device);

  // The scalar loss of logits N×K (K = num_classes) against int64 labels N, with a graph to the
  // logits. Throws c10::Error on a shape mismatch (train_local catches it).
  torch::Tensor operator()(const torch::Tensor& logits, const torch::Tensor& labels) const;

  LocalLossOptions::Kind kind() const { return kind_; }

 private:
  LocalLossOptions::Kind kind_ = LocalLossOptions::Kind::kCrossEntropy;
  double gamma_ = 0;
  torch::Tensor adjustment_;  // balanced_softmax: 1×K, tau · log n_c
  torch::Tensor weights_;     // class_weighted: K
};

// OK when config.local.loss is cross-entropy; otherwise kInvalidArgument
// "config.local.loss: <strategy> trains with its own loss (...); remove the key or set it to
// \"ce\"" — for strategies whose clients do not train through train_local.
Status require_cross_entropy(const LocalTrainOptions& options, const std::string& strategy);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_CLASSIFICATION_LOSS_H_
