#include "common/dataset.h"

#include <torch/torch.h>

namespace fedtail {

std::vector<int64_t> Dataset::class_counts() const {
  std::vector<int64_t> counts(num_classes, 0);
  if (size() == 0) return counts;
  auto bins = torch::bincount(labels, /*weights=*/{}, /*minlength=*/num_classes);
  auto acc = bins.accessor<int64_t, 1>();
  for (int c = 0; c < num_classes && c < acc.size(0); ++c) counts[c] = acc[c];
  return counts;
}

Dataset Dataset::subset(const std::vector<int64_t>& indices) const {
  auto idx = torch::tensor(indices, torch::kInt64);
  Dataset out;
  out.images = images.index_select(0, idx).contiguous();
  out.labels = labels.index_select(0, idx).contiguous();
  out.num_classes = num_classes;
  out.class_names = class_names;
  return out;
}

std::vector<int64_t> Dataset::label_vector() const {
  auto l = labels.contiguous();
  return std::vector<int64_t>(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
}

}  // namespace fedtail
