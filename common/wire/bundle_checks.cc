#include "common/wire/bundle_checks.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

namespace fedtail {

namespace {

std::string spec_string(const NamedTensor& t) {
  return std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape());
}

}  // namespace

Status check_compatible(const TensorBundle& update, const TensorBundle& reference) {
  for (const NamedTensor& ref : reference) {
    const NamedTensor* got = update.find(ref.name());
    if (got == nullptr) {
      return Status::InvalidArgument("tensor \"" + ref.name() + "\": missing (expected " +
                                     spec_string(ref) + ")");
    }
    if (got->dtype() != ref.dtype()) {
      return Status::InvalidArgument("tensor \"" + ref.name() + "\": dtype " +
                                     dtype_name(got->dtype()) + " != expected " +
                                     dtype_name(ref.dtype()));
    }
    if (got->shape() != ref.shape()) {
      return Status::InvalidArgument("tensor \"" + ref.name() + "\": shape " +
                                     shape_to_string(got->shape()) + " != expected " +
                                     shape_to_string(ref.shape()));
    }
  }
  if (update.size() != reference.size()) {
    for (const NamedTensor& t : update) {
      if (!reference.contains(t.name())) {
        return Status::InvalidArgument("tensor \"" + t.name() + "\": not in the reference");
      }
    }
  }
  return Status::OK();
}

namespace {

constexpr int64_t kScanBlock = 4096;

// First index whose value is NaN or ±Inf, or -1. Scans in blocks with a branch-free inner loop
// (which the compiler vectorises) and locates the exact index only in a block known to be bad.
template <typename F>
int64_t first_non_finite_float(const F* p, int64_t n) {
  const F kMax = std::numeric_limits<F>::max();
  for (int64_t start = 0; start < n; start += kScanBlock) {
    const int64_t end = std::min(n, start + kScanBlock);
    bool bad = false;
    // !(|x| <= max) is true exactly for NaN and ±Inf.
    for (int64_t i = start; i < end; ++i) bad |= !(std::fabs(p[i]) <= kMax);
    if (bad) {
      for (int64_t i = start; i < end; ++i) {
        if (!(std::fabs(p[i]) <= kMax)) return i;
      }
    }
  }
  return -1;
}

// Same for 16-bit formats, on bit patterns: the exponent field all ones means NaN or Inf.
int64_t first_non_finite_16(const uint16_t* p, int64_t n, uint16_t exponent_mask) {
  for (int64_t start = 0; start < n; start += kScanBlock) {
    const int64_t end = std::min(n, start + kScanBlock);
    bool bad = false;
    for (int64_t i = start; i < end; ++i) bad |= (p[i] & exponent_mask) == exponent_mask;
    if (bad) {
      for (int64_t i = start; i < end; ++i) {
        if ((p[i] & exponent_mask) == exponent_mask) return i;
      }
    }
  }
  return -1;
}

std::string format_value(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

Status check_finite(const NamedTensor& tensor) {
  int64_t bad = -1;
  double value = 0;
  switch (tensor.dtype()) {
    case DType::kFloat32: {
      const float* p = tensor.data<float>();
      bad = first_non_finite_float(p, tensor.numel());
      if (bad >= 0) value = p[bad];
      break;
    }
    case DType::kFloat64: {
      const double* p = tensor.data<double>();
      bad = first_non_finite_float(p, tensor.numel());
      if (bad >= 0) value = p[bad];
      break;
    }
    case DType::kFloat16: {
      const uint16_t* p = tensor.data<uint16_t>();
      bad = first_non_finite_16(p, tensor.numel(), 0x7c00);
      if (bad >= 0) value = half_to_float(p[bad]);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* p = tensor.data<uint16_t>();
      bad = first_non_finite_16(p, tensor.numel(), 0x7f80);
      if (bad >= 0) value = bfloat16_to_float(p[bad]);
      break;
    }
    default:
      return Status::OK();
  }
  if (bad < 0) return Status::OK();
  return Status::Corruption("tensor \"" + tensor.name() + "\": non-finite value " +
                            format_value(value) + " at index " + std::to_string(bad));
}

Status check_finite(const TensorBundle& bundle) {
  for (const NamedTensor& t : bundle) FEDTAIL_RETURN_IF_ERROR(check_finite(t));
  return Status::OK();
}

}  // namespace fedtail
