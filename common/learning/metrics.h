// Accuracy metrics: overall and per-class accuracy, Many/Medium/Few class groups, personalised
// accuracy over clients. Computed on tensors (bincount), never per-sample loops.
#ifndef FEDTAIL_COMMON_LEARNING_METRICS_H_
#define FEDTAIL_COMMON_LEARNING_METRICS_H_

#include <torch/types.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

// A split of the classes into Many / Medium / Few by their training counts. Each list holds class
// indices in ascending order; every class is in exactly one list.
struct ClassGroups {
  std::string rule;  // how the split was made, e.g. "cumulative_share(0.75, 0.95)"
  std::vector<int> many;
  std::vector<int> medium;
  std::vector<int> few;
};

// The FedLoGe rule (util/util.py shot_split). Sort classes by training count, descending (ties:
// lower class index first). The cumulative share where class c *starts* is
//   start(c) = (sum of the counts of the classes before c in that order) / (sum of all counts).
// start(c) < many_share → Many; else start(c) < medium_share → Medium; else Few. So the class
// that crosses 75% is still Many. Fashion-MNIST-LT IF100 (6000, 3597, 2156, 1292, 774, 464, 278,
// 166, 100, 60) gives Many {0,1,2}, Medium {3,4,5}, Few {6,7,8,9}; CIFAR-100 IF100 30/31/39.
// All counts 0: every class is Many.
ClassGroups groups_by_cumulative_share(const std::vector<int64_t>& train_counts,
                                       double many_share = 0.75, double medium_share = 0.95);

// The common thresholds: count > many_above → Many; few_below <= count <= many_above → Medium;
// count < few_below → Few. Defaults: > 100 / 20–100 / < 20.
ClassGroups groups_by_threshold(const std::vector<int64_t>& train_counts, int64_t many_above = 100,
                                int64_t few_below = 20);

struct AccuracyReport {
  double overall = 0;             // correct / examples; NaN when there are no examples
  int64_t examples = 0;           // evaluated examples
  int64_t correct = 0;            // correctly classified examples
  std::vector<double> per_class;  // accuracy per class; NaN for a class absent from the labels
  std::vector<int64_t> per_class_examples;
  ClassGroups groups;
  // Mean per-class accuracy over the group's classes that have examples; NaN when none has.
  double many = 0;
  double medium = 0;
  double few = 0;

  // {"overall", "examples", "correct", "per_class": [...], "many", "medium", "few",
  //  "groups": {"rule", "many": [...], "medium": [...], "few": [...]}}; NaN becomes null.
  nlohmann::json to_json() const;
};

// Accuracy of `predictions` against `labels` (int64 N each, any device; same N). Labels must lie in
// [0, num_classes); `groups` is copied into the report and used for the group means. Returns
// kInvalidArgument for mismatched shapes, a label outside [0, num_classes), or a group naming a
// class outside that range.
Result<AccuracyReport> accuracy_report(const torch::Tensor& predictions,
                                       const torch::Tensor& labels, int num_classes,
                                       const ClassGroups& groups);

// Sets the logits (N×K) of classes whose training count is 0 to -inf, on a copy: the
// eval.mask_absent_classes protocol. Classes beyond train_counts.size() are masked too. When every
// count is 0 the logits are returned unchanged.
torch::Tensor mask_absent_classes(const torch::Tensor& logits,
                                  const std::vector<int64_t>& train_counts);

// One client's personalised evaluation.
struct ClientAccuracy {
  int64_t correct = 0;
  int64_t examples = 0;
};

struct PersonalizedAccuracy {
  double mean = 0;       // plain mean of the per-client accuracies (clients with examples)
  double weighted = 0;   // total correct / total examples (the sample-weighted mean)
  int clients = 0;       // clients with at least one example
  int64_t examples = 0;  // their examples, all together
  // NaN (null in JSON) when no client has examples.
  nlohmann::json to_json() const;
};

PersonalizedAccuracy personalized_accuracy(const std::vector<ClientAccuracy>& clients);

// NaN → null, otherwise the number (the JSON convention for missing metrics).
nlohmann::json number_or_null(double value);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_METRICS_H_
