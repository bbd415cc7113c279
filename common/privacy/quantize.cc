#include "common/privacy/quantize.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/wire/float_elements.h"

namespace fedtail::privacy {
namespace {

double levels(const QuantizeParams& params) {
  return static_cast<double>((uint64_t{1} << params.bits) - 1);
}

Status check_same(const NamedTensor& t, const NamedTensor* other, const char* what) {
  if (other == nullptr) {
    return Status::InvalidArgument(std::string(what) + ": tensor \"" + t.name() + "\" is missing");
  }
  if (other->dtype() != t.dtype() || other->shape() != t.shape()) {
    return Status::InvalidArgument(std::string(what) + ": tensor \"" + t.name() + "\" is " +
                                   dtype_name(other->dtype()) + " " +
                                   shape_to_string(other->shape()) + ", expected " +
                                   dtype_name(t.dtype()) + " " + shape_to_string(t.shape()));
  }
  return Status::OK();
}

}  // namespace

Status check_quantize_params(const QuantizeParams& params, int64_t max_clients) {
  if (!(params.clip > 0) || !std::isfinite(params.clip)) {
    return Status::InvalidArgument("config.secagg.clip: must be > 0 and finite (got " +
                                   std::to_string(params.clip) + ")");
  }
  if (params.bits < 1 || params.bits > 31) {
    return Status::InvalidArgument("config.secagg.bits: must be in [1, 31] (got " +
                                   std::to_string(params.bits) + ")");
  }
  const uint64_t top = (uint64_t{1} << params.bits) - 1;
  if (max_clients < 1) {
    return Status::InvalidArgument("secure aggregation needs at least one client (got " +
                                   std::to_string(max_clients) + ")");
  }
  if (static_cast<uint64_t>(max_clients) > ((uint64_t{1} << 32) - 1) / top) {
    return Status::InvalidArgument(
        "config.secagg.bits: " + std::to_string(max_clients) + " clients of " +
        std::to_string(params.bits) + "-bit inputs overflow the 32-bit sum (at most " +
        std::to_string(((uint64_t{1} << 32) - 1) / top) + " clients a round; lower bits)");
  }
  return Status::OK();
}

int64_t secure_words(const TensorBundle& reference) {
  int64_t n = 0;
  for (const NamedTensor& t : reference) {
    if (dtype_is_floating(t.dtype())) n += t.numel();
  }
  return n;
}

Result<std::vector<uint32_t>> quantize_update(const TensorBundle& update, const TensorBundle& base,
                                              double weight, const QuantizeParams& params,
                                              int64_t* clamped) {
  if (!(weight > 0) || weight > 1) {
    return Status::InvalidArgument("secure input: weight must be in (0, 1] (got " +
                                   std::to_string(weight) + ")");
  }
  std::vector<uint32_t> words(static_cast<size_t>(secure_words(base)));
  const double c = params.clip;
  const double scale = levels(params) / (2 * c);
  int64_t clamped_count = 0;
  size_t at = 0;
  for (const NamedTensor& g : base) {
    if (!dtype_is_floating(g.dtype())) continue;
    const NamedTensor* u = update.find(g.name());
    FEDTAIL_RETURN_IF_ERROR(check_same(g, u, "secure input"));
    const DType dtype = g.dtype();
    for (int64_t i = 0; i < g.numel(); ++i) {
      double v = weight * (load_float(dtype, u->bytes(), i) - load_float(dtype, g.bytes(), i));
      if (!std::isfinite(v)) {
        return Status::InvalidArgument("secure input: tensor \"" + g.name() +
                                       "\" holds a non-finite value");
      }
      if (v > c || v < -c) {
        ++clamped_count;
        v = std::clamp(v, -c, c);
      }
      words[at++] = static_cast<uint32_t>(std::nearbyint((v + c) * scale));
    }
  }
  if (clamped != nullptr) *clamped = clamped_count;
  return words;
}

Result<TensorBundle> masked_layout(const TensorBundle& base) {
  TensorBundle out;
  for (const NamedTensor& g : base) {
    if (!dtype_is_floating(g.dtype())) continue;
    FEDTAIL_RETURN_IF_ERROR(out.add_zeros(g.name(), DType::kInt32, g.shape()).status());
  }
  return out;
}

Result<TensorBundle> words_to_bundle(const std::vector<uint32_t>& words, const TensorBundle& base) {
  if (static_cast<int64_t>(words.size()) != secure_words(base)) {
    return Status::InvalidArgument("masked input: " + std::to_string(words.size()) +
                                   " words for a model of " + std::to_string(secure_words(base)));
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle out, masked_layout(base));
  size_t at = 0;
  for (NamedTensor& t : out) {
    std::copy_n(words.data() + at, t.numel(), reinterpret_cast<uint32_t*>(t.mutable_bytes()));
    at += static_cast<size_t>(t.numel());
  }
  return out;
}

Status add_words(const TensorBundle& masked, uint32_t* sum, size_t n) {
  size_t at = 0;
  for (const NamedTensor& t : masked) {
    if (t.dtype() != DType::kInt32) {
      return Status::InvalidArgument("masked input: tensor \"" + t.name() + "\" is " +
                                     dtype_name(t.dtype()) + ", expected int32");
    }
    const size_t count = static_cast<size_t>(t.numel());
    if (at + count > n) return Status::InvalidArgument("masked input: more words than the model");
    const uint32_t* words = reinterpret_cast<const uint32_t*>(t.bytes());
    uint32_t* out = sum + at;
    for (size_t i = 0; i < count; ++i) out[i] += words[i];  // modulo 2^32
    at += count;
  }
  if (at != n) return Status::InvalidArgument("masked input: fewer words than the model");
  return Status::OK();
}

Result<TensorBundle> dequantize_mean(const uint32_t* sum, size_t n, int64_t contributors,
                                     double weight_sum, const TensorBundle& base,
                                     const QuantizeParams& params) {
  if (static_cast<int64_t>(n) != secure_words(base)) {
    return Status::InvalidArgument("aggregate: " + std::to_string(n) + " words for a model of " +
                                   std::to_string(secure_words(base)));
  }
  if (!(weight_sum > 0)) {
    return Status::InvalidArgument("aggregate: the weights' sum must be > 0 (got " +
                                   std::to_string(weight_sum) + ")");
  }
  const double c = params.clip;
  const double step = 2 * c / levels(params);
  const double offset = static_cast<double>(contributors) * c;
  TensorBundle out = base.clone();
  size_t at = 0;
  for (NamedTensor& t : out) {
    if (!dtype_is_floating(t.dtype())) continue;
    const DType dtype = t.dtype();
    uint8_t* bytes = t.mutable_bytes();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double change = (static_cast<double>(sum[at++]) * step - offset) / weight_sum;
      store_float(dtype, bytes, i, load_float(dtype, bytes, i) + change);
    }
  }
  return out;
}

}  // namespace fedtail::privacy
