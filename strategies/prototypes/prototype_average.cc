#include "strategies/prototypes/prototype_average.h"

#include <limits>
#include <string>

namespace fedtail::strategies {

PrototypeAverage::PrototypeAverage(int64_t num_classes, int64_t feature_dim, bool weighted)
    : num_classes_(num_classes),
      feature_dim_(feature_dim),
      weighted_(weighted),
      sums_(static_cast<size_t>(num_classes * feature_dim), 0.0),
      weight_(static_cast<size_t>(num_classes), 0),
      holders_(static_cast<size_t>(num_classes), 0) {}

Status PrototypeAverage::add(const PrototypeSet& set) {
  if (set.num_classes != num_classes_ || set.feature_dim != feature_dim_ ||
      set.rows.size() != sums_.size() || set.counts.size() != weight_.size()) {
    return Status::InvalidArgument(
        "prototypes: " + std::to_string(set.num_classes) + " x " + std::to_string(set.feature_dim) +
        " != expected " + std::to_string(num_classes_) + " x " + std::to_string(feature_dim_));
  }
  for (int64_t c = 0; c < num_classes_; ++c) {
    const int64_t n = set.counts[static_cast<size_t>(c)];
    if (n < 0) {
      return Status::InvalidArgument("prototypes: class " + std::to_string(c) +
                                     " has a negative count");
    }
    if (weighted_ && n > std::numeric_limits<int64_t>::max() - weight_[static_cast<size_t>(c)]) {
      return Status::InvalidArgument("prototypes: the summed count of class " + std::to_string(c) +
                                     " overflows int64");
    }
  }
  for (int64_t c = 0; c < num_classes_; ++c) {
    const int64_t n = set.counts[static_cast<size_t>(c)];
    if (n == 0) continue;
    const int64_t w = weighted_ ? n : 1;
    const double wd = static_cast<double>(w);
    const float* row = set.row(c);
    double* sum = sums_.data() + c * feature_dim_;
    for (int64_t k = 0; k < feature_dim_; ++k) sum[k] += wd * static_cast<double>(row[k]);
    weight_[static_cast<size_t>(c)] += w;
    holders_[static_cast<size_t>(c)] += 1;
  }
  ++updates_;
  return Status::OK();
}

PrototypeSet PrototypeAverage::finish() const {
  PrototypeSet out = PrototypeSet::empty(num_classes_, feature_dim_);
  for (int64_t c = 0; c < num_classes_; ++c) {
    const int64_t w = weight_[static_cast<size_t>(c)];
    if (w == 0) continue;
    const double* sum = sums_.data() + c * feature_dim_;
    float* row = out.rows.data() + c * feature_dim_;
    for (int64_t k = 0; k < feature_dim_; ++k) {
      row[k] = static_cast<float>(sum[k] / static_cast<double>(w));
    }
    out.counts[static_cast<size_t>(c)] = weighted_ ? w : holders_[static_cast<size_t>(c)];
  }
  return out;
}

}  // namespace fedtail::strategies
