#include "common/data/long_tail.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>

namespace fedtail {
namespace {

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

std::vector<int64_t> long_tail_counts(int64_t n_max, double imbalance_factor, int num_classes) {
  FEDTAIL_CHECK(n_max >= 0 && imbalance_factor >= 1.0 && num_classes >= 1);
  std::vector<int64_t> counts(num_classes, n_max);
  if (num_classes == 1) return counts;
  // The same operations as FedLoGe's imbalance_cifar.py (imb_factor = 1/IF, exponent c/(K−1.0)), so
  // the counts agree with theirs to the last example.
  const double ratio = 1.0 / imbalance_factor;
  for (int c = 0; c < num_classes; ++c) {
    const double exponent = static_cast<double>(c) / (num_classes - 1.0);
    counts[c] =
        static_cast<int64_t>(std::floor(static_cast<double>(n_max) * std::pow(ratio, exponent)));
  }
  return counts;
}

Result<std::vector<int64_t>> long_tail_indices(const std::vector<int64_t>& labels, int num_classes,
                                               double imbalance_factor, Rng& rng) {
  if (!std::isfinite(imbalance_factor) || imbalance_factor < 1.0) {
    return Status::InvalidArgument("imbalance_factor: must be >= 1 (got " +
                                   format_number(imbalance_factor) + ")");
  }
  if (num_classes < 1) return Status::InvalidArgument("num_classes: must be >= 1");
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return Status::InvalidArgument("label " + std::to_string(labels[i]) + " at index " +
                                     std::to_string(i) + " is not in [0, " +
                                     std::to_string(num_classes) + ")");
    }
    by_class[labels[i]].push_back(static_cast<int64_t>(i));
  }
  int64_t n_max = 0;
  for (const auto& members : by_class) n_max = std::max<int64_t>(n_max, members.size());
  const std::vector<int64_t> target = long_tail_counts(n_max, imbalance_factor, num_classes);
  std::vector<int64_t> kept;
  for (int c = 0; c < num_classes; ++c) {
    const auto& members = by_class[c];
    const int64_t available = static_cast<int64_t>(members.size());
    const int64_t keep = std::min(target[c], available);
    if (keep == available) {
      kept.insert(kept.end(), members.begin(), members.end());
      continue;
    }
    for (int64_t j : rng.sample_without_replacement(available, keep)) kept.push_back(members[j]);
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

const char* class_group_name(ClassGroup group) {
  switch (group) {
    case ClassGroup::kMany:
      return "many";
    case ClassGroup::kMedium:
      return "medium";
    case ClassGroup::kFew:
      return "few";
  }
  return "?";
}

std::vector<ClassGroup> many_medium_few(const std::vector<int64_t>& class_counts) {
  std::vector<ClassGroup> groups(class_counts.size(), ClassGroup::kMany);
  const int64_t total = std::accumulate(class_counts.begin(), class_counts.end(), int64_t{0});
  if (total <= 0) return groups;
  std::vector<size_t> order(class_counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return class_counts[a] > class_counts[b]; });
  int64_t before = 0;
  for (size_t c : order) {
    // Integer comparisons (100·before < 75·total) avoid rounding at the thresholds.
    if (100 * before < 75 * total) {
      groups[c] = ClassGroup::kMany;
    } else if (100 * before < 95 * total) {
      groups[c] = ClassGroup::kMedium;
    } else {
      groups[c] = ClassGroup::kFew;
    }
    before += class_counts[c];
  }
  return groups;
}

}  // namespace fedtail
