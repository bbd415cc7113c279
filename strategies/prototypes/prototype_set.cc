#include "strategies/prototypes/prototype_set.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

namespace fedtail::strategies {

PrototypeSet PrototypeSet::empty(int64_t num_classes, int64_t feature_dim) {
  PrototypeSet set;
  set.num_classes = num_classes;
  set.feature_dim = feature_dim;
  set.rows.assign(static_cast<size_t>(num_classes * feature_dim), 0.0f);
  set.counts.assign(static_cast<size_t>(num_classes), 0);
  return set;
}

int64_t PrototypeSet::num_present() const {
  int64_t n = 0;
  for (int64_t c : counts) n += c > 0 ? 1 : 0;
  return n;
}

Status add_prototype_tensors(const PrototypeSet& set, TensorBundle* bundle) {
  const int64_t c = set.num_classes;
  const int64_t d = set.feature_dim;
  if (c < 1 || d < 1 || set.rows.size() != static_cast<size_t>(c * d) ||
      set.counts.size() != static_cast<size_t>(c)) {
    return Status::InvalidArgument("prototypes: inconsistent sizes (" + std::to_string(c) + " x " +
                                   std::to_string(d) + " with " + std::to_string(set.rows.size()) +
                                   " values and " + std::to_string(set.counts.size()) + " counts)");
  }
  FEDTAIL_RETURN_IF_ERROR(
      bundle->add(NamedTensor::from_values(kPrototypesTensor, DType::kFloat32, {c, d}, set.rows)));
  return bundle->add(NamedTensor::from_values(kCountsTensor, DType::kInt64, {c}, set.counts));
}

namespace {

Status expect_tensor(const NamedTensor* t, const char* name, DType dtype,
                     const std::vector<int64_t>& shape, const std::string& what) {
  if (t == nullptr) {
    return Status::InvalidArgument(what + ": tensor \"" + name + "\": missing (expected " +
                                   dtype_name(dtype) + " " + shape_to_string(shape) + ")");
  }
  if (t->dtype() != dtype || t->shape() != shape) {
    return Status::InvalidArgument(what + ": tensor \"" + name + "\": " + dtype_name(t->dtype()) +
                                   " " + shape_to_string(t->shape()) + " != expected " +
                                   dtype_name(dtype) + " " + shape_to_string(shape));
  }
  return Status::OK();
}

}  // namespace

Result<PrototypeSet> read_prototype_tensors(const TensorBundle& bundle, int64_t num_classes,
                                            int64_t feature_dim, const std::string& what) {
  const NamedTensor* rows = bundle.find(kPrototypesTensor);
  const NamedTensor* counts = bundle.find(kCountsTensor);
  FEDTAIL_RETURN_IF_ERROR(
      expect_tensor(rows, kPrototypesTensor, DType::kFloat32, {num_classes, feature_dim}, what));
  FEDTAIL_RETURN_IF_ERROR(expect_tensor(counts, kCountsTensor, DType::kInt64, {num_classes}, what));
  PrototypeSet set = PrototypeSet::empty(num_classes, feature_dim);
  std::memcpy(set.rows.data(), rows->data<float>(), rows->nbytes());
  std::memcpy(set.counts.data(), counts->data<int64_t>(), counts->nbytes());
  for (int64_t c = 0; c < num_classes; ++c) {
    if (set.counts[static_cast<size_t>(c)] < 0) {
      return Status::InvalidArgument(what + ": tensor \"" + kCountsTensor + "\": class " +
                                     std::to_string(c) + " has a negative count (" +
                                     std::to_string(set.counts[static_cast<size_t>(c)]) + ")");
    }
  }
  return set;
}

Status check_tensor_names(const TensorBundle& bundle, const std::vector<std::string>& expected,
                          const std::string& what) {
  const std::set<std::string> wanted(expected.begin(), expected.end());
  for (const NamedTensor& t : bundle) {
    if (wanted.count(t.name()) == 0) {
      return Status::InvalidArgument(what + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  for (const std::string& name : expected) {
    if (!bundle.contains(name)) {
      return Status::InvalidArgument(what + ": tensor \"" + name + "\": missing");
    }
  }
  return Status::OK();
}

nlohmann::json NearestDistances::to_json() const {
  auto finite = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  return {{"classes", classes}, {"min", finite(min)}, {"mean", finite(mean)}, {"max", finite(max)}};
}

NearestDistances nearest_distances(const PrototypeSet& set) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  NearestDistances out;
  std::vector<int64_t> present;
  for (int64_t c = 0; c < set.num_classes; ++c) {
    if (set.present(c)) present.push_back(c);
  }
  out.classes = static_cast<int64_t>(present.size());
  if (present.size() < 2) {
    out.min = out.mean = out.max = kNegInf;
    return out;
  }
  const int64_t d = set.feature_dim;
  double sum = 0;
  out.min = std::numeric_limits<double>::infinity();
  out.max = kNegInf;
  for (int64_t i : present) {
    double nearest = std::numeric_limits<double>::infinity();
    const float* a = set.row(i);
    for (int64_t j : present) {
      if (j == i) continue;
      const float* b = set.row(j);
      double squared = 0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = static_cast<double>(a[k]) - static_cast<double>(b[k]);
        squared += diff * diff;
      }
      nearest = std::min(nearest, std::sqrt(squared));
    }
    sum += nearest;
    out.min = std::min(out.min, nearest);
    out.max = std::max(out.max, nearest);
  }
  out.mean = sum / static_cast<double>(present.size());
  return out;
}

}  // namespace fedtail::strategies
