#include "common/data/dataset.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

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

ChannelStats channel_stats(const Dataset& dataset) {
  ChannelStats stats;
  if (dataset.size() == 0) return stats;
  const int64_t n = dataset.size(), c = dataset.channels();
  const int64_t plane = dataset.height() * dataset.width();
  // Integer sums are exact: 255² · 2^44 pixels per channel still fits in 64 bits.
  std::vector<uint64_t> sum(c, 0), sum_sq(c, 0);
  constexpr int64_t kBatch = 1024;
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    const int64_t end = std::min(n, begin + kBatch);
    auto batch = dataset.images.slice(0, begin, end).contiguous();
    const uint8_t* px = batch.data_ptr<uint8_t>();
    for (int64_t i = 0; i < end - begin; ++i) {
      for (int64_t ch = 0; ch < c; ++ch) {
        const uint8_t* p = px + (i * c + ch) * plane;
        uint64_t s = 0, s2 = 0;
        for (int64_t k = 0; k < plane; ++k) {
          s += p[k];
          s2 += static_cast<uint64_t>(p[k]) * p[k];
        }
        sum[ch] += s;
        sum_sq[ch] += s2;
      }
    }
  }
  const double count = static_cast<double>(n) * static_cast<double>(plane);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double mean = static_cast<double>(sum[ch]) / count;
    const double var = static_cast<double>(sum_sq[ch]) / count - mean * mean;
    stats.mean.push_back(mean / 255.0);
    stats.std.push_back(std::sqrt(std::max(0.0, var)) / 255.0);
  }
  return stats;
}

}  // namespace fedtail
