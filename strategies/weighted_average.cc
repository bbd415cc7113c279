#include "strategies/weighted_average.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <string>
#include <utility>

#include "common/wire/bundle_checks.h"

namespace fedtail::strategies {
namespace {

// acc[i] = ((acc[i] + w0·s0[i]) + w1·s1[i]) + ... for K float32 sources: the additions in the
// order K one-update folds make them, so the sums are bitwise the same (no fused multiply-add:
// neither the build nor the AVX2 clone below enables FMA), while acc is loaded and stored once
// instead of K times.
template <int K>
__attribute__((always_inline)) inline void accumulate_k(const float* const* src,
                                                        const double* weight,
                                                        double* __restrict acc, int64_t n) {
  const float* __restrict s[K];
  double w[K];
  for (int k = 0; k < K; ++k) {
    s[k] = src[k];
    w[k] = weight[k];
  }
  for (int64_t i = 0; i < n; ++i) {
    double a = acc[i];
    for (int k = 0; k < K; ++k) a += w[k] * static_cast<double>(s[k][i]);
    acc[i] = a;
  }
}

// Folds `count` float32 sources into acc, four at a time. Compiled twice, for AVX2 (4 doubles per
// instruction) and for the baseline (SSE2, 2 doubles), chosen at load time; the arithmetic, and
// so the result, is the same.
__attribute__((target_clones("avx2", "default"))) void accumulate_many(const float* const* src,
                                                                       const double* weight,
                                                                       size_t count, double* acc,
                                                                       int64_t n) {
  size_t k = 0;
  for (; k + 4 <= count; k += 4) accumulate_k<4>(src + k, weight + k, acc, n);
  switch (count - k) {
    case 3:
      accumulate_k<3>(src + k, weight + k, acc, n);
      break;
    case 2:
      accumulate_k<2>(src + k, weight + k, acc, n);
      break;
    case 1:
      accumulate_k<1>(src + k, weight + k, acc, n);
      break;
    default:
      break;
  }
}

// float64 sources: compensated (double-double) sums, because a plain double sum of doubles
// depends on the order in its last bit. The product's error comes from fma, the sum's from
// TwoSum; both go to lo. hi + lo then carries ~106 bits, so rounding it once in finish() gives the
// same double whatever the order (barring a tie within 2^-106).
void accumulate_compensated(const double* __restrict src, double* __restrict hi,
                            double* __restrict lo, int64_t n, double weight) {
  for (int64_t i = 0; i < n; ++i) {
    const double p = weight * src[i];
    const double p_error = std::fma(weight, src[i], -p);
    const double s = hi[i] + p;
    const double b = s - hi[i];
    const double s_error = (hi[i] - (s - b)) + (p - b);
    hi[i] = s;
    lo[i] += s_error + p_error;
  }
}

// The same for half types, widened exactly to float first (a plain call, inlined).
template <float (*kToFloat)(uint16_t)>
void accumulate_half(const uint16_t* __restrict src, double* __restrict acc, int64_t n,
                     double weight) {
  for (int64_t i = 0; i < n; ++i) acc[i] += weight * static_cast<double>(kToFloat(src[i]));
}

template <typename T>
void write_mean(const double* __restrict acc, T* __restrict out, int64_t n, double total) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(acc[i] / total);
}

template <uint16_t (*kFromFloat)(float)>
void write_mean_half(const double* __restrict acc, uint16_t* __restrict out, int64_t n,
                     double total) {
  for (int64_t i = 0; i < n; ++i) out[i] = kFromFloat(static_cast<float>(acc[i] / total));
}

// Reads element i of an integer/bool tensor as a signed 64-bit value.
int64_t int_element(const NamedTensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kInt64:
      return t.data<int64_t>()[i];
    case DType::kInt32:
      return t.data<int32_t>()[i];
    case DType::kUInt8:
    case DType::kBool:
      return t.bytes()[i];
    default:
      FEDTAIL_CHECK(false);
      return 0;
  }
}

void set_int_element(NamedTensor& t, int64_t i, int64_t value) {
  switch (t.dtype()) {
    case DType::kInt64:
      t.data<int64_t>()[i] = value;
      break;
    case DType::kInt32:
      t.data<int32_t>()[i] = static_cast<int32_t>(value);
      break;
    case DType::kUInt8:
      t.mutable_bytes()[i] = static_cast<uint8_t>(value);
      break;
    case DType::kBool:
      t.mutable_bytes()[i] = value != 0 ? 1 : 0;
      break;
    default:
      FEDTAIL_CHECK(false);
  }
}

}  // namespace

size_t fold_group_size(uint64_t update_bytes) {
  constexpr size_t kMaxGroup = 4;
  constexpr uint64_t kMaxGroupBytes = uint64_t{96} << 20;
  if (update_bytes == 0) return kMaxGroup;
  return static_cast<size_t>(std::clamp<uint64_t>(kMaxGroupBytes / update_bytes, 1, kMaxGroup));
}

Result<WeightedAverage> WeightedAverage::create(std::shared_ptr<const TensorBundle> reference) {
  if (!reference) return Status::InvalidArgument("WeightedAverage: null reference bundle");
  WeightedAverage avg;
  size_t float_elements = 0, int_elements = 0;
  avg.slots_.reserve(reference->size());
  for (const NamedTensor& t : *reference) {
    Slot slot;
    slot.dtype = t.dtype();
    slot.floating = dtype_is_floating(t.dtype());
    slot.numel = t.numel();
    size_t& count = slot.floating ? float_elements : int_elements;
    slot.offset = count;
    // float64 keeps a (hi, lo) pair per element: hi at offset, lo at offset + numel.
    count += static_cast<size_t>(t.numel()) * (t.dtype() == DType::kFloat64 ? 2 : 1);
    avg.slots_.push_back(slot);
  }
  try {
    avg.float_sums_.assign(float_elements, 0.0);
    avg.int_sums_.assign(int_elements, 0);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("WeightedAverage: cannot allocate accumulators for " +
                                     std::to_string(float_elements + int_elements) + " elements");
  }
  avg.reference_ = std::move(reference);
  return avg;
}

Status WeightedAverage::reset(std::shared_ptr<const TensorBundle> reference) {
  if (!reference) return Status::InvalidArgument("WeightedAverage: null reference bundle");
  FEDTAIL_RETURN_IF_ERROR(check_compatible(*reference, *reference_));
  // Same names, dtypes and shapes, but possibly another order: the slots follow the reference.
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (reference->at(s).name() != reference_->at(s).name()) {
      return Status::InvalidArgument("WeightedAverage::reset: tensor " + std::to_string(s) +
                                     " is \"" + reference->at(s).name() + "\", was \"" +
                                     reference_->at(s).name() + "\"");
    }
  }
  std::fill(float_sums_.begin(), float_sums_.end(), 0.0);
  std::fill(int_sums_.begin(), int_sums_.end(), Int128{0});
  reference_ = std::move(reference);
  updates_ = 0;
  total_examples_ = 0;
  return Status::OK();
}

Status WeightedAverage::check(const TensorBundle& update, int64_t num_examples) const {
  if (num_examples <= 0) {
    return Status::InvalidArgument("num_examples: must be > 0 (got " +
                                   std::to_string(num_examples) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(check_compatible(update, *reference_));
  int64_t new_total = 0;
  if (__builtin_add_overflow(total_examples_, num_examples, &new_total)) {
    return Status::InvalidArgument("num_examples: the total example count overflows int64");
  }
  return Status::OK();
}

Status WeightedAverage::add(const TensorBundle& update, int64_t num_examples) {
  return add_all({Weighted{&update, num_examples}});
}

Status WeightedAverage::add_all(const std::vector<Weighted>& updates) {
  int64_t new_total = total_examples_;
  for (size_t k = 0; k < updates.size(); ++k) {
    const Weighted& u = updates[k];
    FEDTAIL_CHECK(u.update != nullptr);
    Status ok = check(*u.update, u.num_examples);
    if (ok.ok() && __builtin_add_overflow(new_total, u.num_examples, &new_total)) {
      ok = Status::InvalidArgument("num_examples: the total example count overflows int64");
    }
    if (!ok.ok()) {
      return updates.size() == 1 ? ok
                                 : ok.with_context("update " + std::to_string(k + 1) + " of " +
                                                   std::to_string(updates.size()));
    }
  }

  std::vector<const float*> float_sources(updates.size());
  std::vector<double> weights(updates.size());
  for (size_t k = 0; k < updates.size(); ++k) {
    weights[k] = static_cast<double>(updates[k].num_examples);
  }
  for (size_t s = 0; s < slots_.size(); ++s) {
    const Slot& slot = slots_[s];
    const std::string& name = reference_->at(s).name();
    if (slot.floating && slot.dtype == DType::kFloat32) {
      for (size_t k = 0; k < updates.size(); ++k) {
        float_sources[k] = updates[k].update->find(name)->data<float>();  // checked above
      }
      accumulate_many(float_sources.data(), weights.data(), updates.size(),
                      float_sums_.data() + slot.offset, slot.numel);
      continue;
    }
    // The other dtypes (small tensors in practice): one update after the other.
    for (size_t k = 0; k < updates.size(); ++k) {
      const NamedTensor& src = *updates[k].update->find(name);
      const double weight = weights[k];
      if (slot.floating) {
        double* acc = float_sums_.data() + slot.offset;
        switch (slot.dtype) {
          case DType::kFloat64:
            accumulate_compensated(src.data<double>(), acc, acc + slot.numel, slot.numel, weight);
            break;
          case DType::kFloat16:
            accumulate_half<half_to_float>(src.data<uint16_t>(), acc, slot.numel, weight);
            break;
          case DType::kBFloat16:
            accumulate_half<bfloat16_to_float>(src.data<uint16_t>(), acc, slot.numel, weight);
            break;
          default:
            FEDTAIL_CHECK(false);
        }
      } else {
        // Cannot overflow: |Σ n_k·w_k| <= (Σ n_k) · 2^63 <= 2^126 since the total fits int64.
        Int128* acc = int_sums_.data() + slot.offset;
        const int64_t n = updates[k].num_examples;
        for (int64_t i = 0; i < slot.numel; ++i) {
          acc[i] += static_cast<Int128>(n) * int_element(src, i);
        }
      }
    }
  }
  updates_ += static_cast<int64_t>(updates.size());
  total_examples_ = new_total;
  return Status::OK();
}

Result<TensorBundle> WeightedAverage::finish() const {
  if (updates_ == 0) return Status::FailedPrecondition("WeightedAverage: no update was added");
  const double total = static_cast<double>(total_examples_);
  const Int128 n = total_examples_;
  TensorBundle out;
  for (size_t s = 0; s < slots_.size(); ++s) {
    const Slot& slot = slots_[s];
    const NamedTensor& ref = reference_->at(s);
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t,
                             NamedTensor::uninitialized(ref.name(), ref.dtype(), ref.shape()));
    if (slot.floating) {
      const double* acc = float_sums_.data() + slot.offset;
      switch (slot.dtype) {
        case DType::kFloat32:
          write_mean(acc, t.data<float>(), slot.numel, total);
          break;
        case DType::kFloat64: {
          double* out = t.data<double>();
          const double* lo = acc + slot.numel;
          for (int64_t i = 0; i < slot.numel; ++i) out[i] = (acc[i] + lo[i]) / total;
          break;
        }
        case DType::kFloat16:
          write_mean_half<float_to_half>(acc, t.data<uint16_t>(), slot.numel, total);
          break;
        case DType::kBFloat16:
          write_mean_half<float_to_bfloat16>(acc, t.data<uint16_t>(), slot.numel, total);
          break;
        default:
          FEDTAIL_CHECK(false);
      }
    } else {
      const Int128* acc = int_sums_.data() + slot.offset;
      for (int64_t i = 0; i < slot.numel; ++i) {
        // Round to nearest, ties away from zero. The mean lies between the smallest and the
        // largest input value, so it fits the dtype.
        Int128 q = acc[i] / n;
        const Int128 r = acc[i] % n;
        const Int128 twice_r = r < 0 ? -2 * r : 2 * r;
        if (twice_r >= n) q += acc[i] < 0 ? -1 : 1;
        set_int_element(t, i, static_cast<int64_t>(q));
      }
    }
    FEDTAIL_RETURN_IF_ERROR(out.add(std::move(t)));
  }
  return out;
}

}  // namespace fedtail::strategies
