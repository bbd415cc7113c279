#include "common/learning/metrics.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

namespace fedtail {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string format_rule(const char* name, double a, double b) {
  std::ostringstream s;
  s << name << "(" << a << ", " << b << ")";
  return s.str();
}

void sort_groups(ClassGroups* g) {
  std::sort(g->many.begin(), g->many.end());
  std::sort(g->medium.begin(), g->medium.end());
  std::sort(g->few.begin(), g->few.end());
}

double group_mean(const std::vector<int>& classes, const std::vector<double>& per_class) {
  double sum = 0;
  int n = 0;
  for (int c : classes) {
    if (std::isnan(per_class[c])) continue;
    sum += per_class[c];
    ++n;
  }
  return n == 0 ? kNaN : sum / n;
}

}  // namespace

nlohmann::json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
}

ClassGroups groups_by_cumulative_share(const std::vector<int64_t>& train_counts, double many_share,
                                       double medium_share) {
  ClassGroups g;
  g.rule = format_rule("cumulative_share", many_share, medium_share);
  std::vector<int> order(train_counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return train_counts[a] > train_counts[b]; });
  const double total = std::accumulate(train_counts.begin(), train_counts.end(), 0.0);
  double before = 0;
  for (int c : order) {
    const double start = total > 0 ? before / total : 0.0;
    if (start < many_share) {
      g.many.push_back(c);
    } else if (start < medium_share) {
      g.medium.push_back(c);
    } else {
      g.few.push_back(c);
    }
    before += static_cast<double>(train_counts[c]);
  }
  sort_groups(&g);
  return g;
}

ClassGroups groups_by_threshold(const std::vector<int64_t>& train_counts, int64_t many_above,
                                int64_t few_below) {
  ClassGroups g;
  g.rule = "threshold(>" + std::to_string(many_above) + ", <" + std::to_string(few_below) + ")";
  for (size_t c = 0; c < train_counts.size(); ++c) {
    const int64_t n = train_counts[c];
    if (n > many_above) {
      g.many.push_back(static_cast<int>(c));
    } else if (n >= few_below) {
      g.medium.push_back(static_cast<int>(c));
    } else {
      g.few.push_back(static_cast<int>(c));
    }
  }
  return g;
}

Result<AccuracyReport> accuracy_report(const torch::Tensor& predictions,
                                       const torch::Tensor& labels, int num_classes,
                                       const ClassGroups& groups) {
  if (num_classes < 1) {
    return Status::InvalidArgument("accuracy_report: num_classes must be >= 1 (got " +
                                   std::to_string(num_classes) + ")");
  }
  if (predictions.dim() != 1 || labels.dim() != 1 || predictions.size(0) != labels.size(0)) {
    return Status::InvalidArgument(
        "accuracy_report: predictions and labels must be 1-D of equal "
        "length");
  }
  for (const auto* list : {&groups.many, &groups.medium, &groups.few}) {
    for (int c : *list) {
      if (c < 0 || c >= num_classes) {
        return Status::InvalidArgument("accuracy_report: class group names class " +
                                       std::to_string(c) + " outside [0, " +
                                       std::to_string(num_classes) + ")");
      }
    }
  }
  AccuracyReport report;
  report.groups = groups;
  report.examples = labels.size(0);
  report.per_class.assign(num_classes, kNaN);
  report.per_class_examples.assign(num_classes, 0);
  if (report.examples > 0) {
    auto y = labels.to(torch::kCPU, torch::kInt64);
    auto p = predictions.to(torch::kCPU, torch::kInt64);
    const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
    if (lo < 0 || hi >= num_classes) {
      return Status::InvalidArgument("accuracy_report: label " + std::to_string(lo < 0 ? lo : hi) +
                                     " outside [0, " + std::to_string(num_classes) + ")");
    }
    auto correct = p.eq(y);
    auto totals = torch::bincount(y, /*weights=*/{}, /*minlength=*/num_classes);
    auto hits = torch::bincount(y.masked_select(correct), /*weights=*/{}, num_classes);
    auto t = totals.accessor<int64_t, 1>();
    auto h = hits.accessor<int64_t, 1>();
    for (int c = 0; c < num_classes; ++c) {
      report.per_class_examples[c] = t[c];
      report.correct += h[c];
      if (t[c] > 0) report.per_class[c] = static_cast<double>(h[c]) / static_cast<double>(t[c]);
    }
  }
  report.overall = report.examples > 0
                       ? static_cast<double>(report.correct) / static_cast<double>(report.examples)
                       : kNaN;
  report.many = group_mean(groups.many, report.per_class);
  report.medium = group_mean(groups.medium, report.per_class);
  report.few = group_mean(groups.few, report.per_class);
  return report;
}

nlohmann::json AccuracyReport::to_json() const {
  nlohmann::json per_class_json = nlohmann::json::array();
  for (double a : per_class) per_class_json.push_back(number_or_null(a));
  return {
      {"overall", number_or_null(overall)},
      {"examples", examples},
      {"correct", correct},
      {"per_class", per_class_json},
      {"per_class_examples", per_class_examples},
      {"many", number_or_null(many)},
      {"medium", number_or_null(medium)},
      {"few", number_or_null(few)},
      {"groups",
       {{"rule", groups.rule},
        {"many", groups.many},
        {"medium", groups.medium},
        {"few", groups.few}}},
  };
}

torch::Tensor mask_absent_classes(const torch::Tensor& logits,
                                  const std::vector<int64_t>& train_counts) {
  const int64_t k = logits.size(-1);
  std::vector<uint8_t> absent(k, 1);
  bool any_present = false;
  for (int64_t c = 0; c < k && c < static_cast<int64_t>(train_counts.size()); ++c) {
    if (train_counts[c] > 0) {
      absent[c] = 0;
      any_present = true;
    }
  }
  if (!any_present) return logits;
  auto mask = torch::tensor(std::vector<int64_t>(absent.begin(), absent.end()))
                  .to(logits.device(), torch::kBool);
  return logits.masked_fill(mask, -std::numeric_limits<double>::infinity());
}

PersonalizedAccuracy personalized_accuracy(const std::vector<ClientAccuracy>& clients) {
  PersonalizedAccuracy out;
  double sum = 0;
  int64_t correct = 0, examples = 0;
  for (const auto& c : clients) {
    if (c.examples <= 0 || c.correct < 0 || c.correct > c.examples) continue;
    // Checked sums: a report that would overflow them is left out rather than wrap.
    int64_t next_correct, next_examples;
    if (__builtin_add_overflow(correct, c.correct, &next_correct) ||
        __builtin_add_overflow(examples, c.examples, &next_examples)) {
      continue;
    }
    sum += static_cast<double>(c.correct) / static_cast<double>(c.examples);
    correct = next_correct;
    examples = next_examples;
    ++out.clients;
  }
  out.mean = out.clients > 0 ? sum / out.clients : kNaN;
  out.examples = examples;
  out.weighted = examples > 0 ? static_cast<double>(correct) / static_cast<double>(examples) : kNaN;
  return out;
}

nlohmann::json PersonalizedAccuracy::to_json() const {
  return {{"mean", number_or_null(mean)},
          {"weighted", number_or_null(weighted)},
          {"clients", clients},
          {"examples", examples}};
}

}  // namespace fedtail
