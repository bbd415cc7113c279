// Fixed-point encoding of client updates for secure aggregation, and the bundle-level arithmetic
// on the masked words (common/privacy/secagg.h).
//
// A client's secure input is the change of the floating-point tensors of its update against the
// task's bundle (the global model), times its weight w in (0, 1], each value clamped to [-c, c]
// and mapped to an integer of `bits` bits:
//   q = round((clamp(w·(u - g), -c, c) + c) / (2c) · (2^bits - 1))   (ties to even).
// The sum of n such words fits in 32 bits when n · (2^bits - 1) < 2^32, so the masked sum modulo
// 2^32 unmasks to the exact integer sum, which de-quantises to Σ w·(u - g) up to n half-steps of
// c / (2^bits - 1) per value. Tensors of other dtypes (BatchNorm's int64 counters) are not part of
// the secure input: the aggregate keeps the task bundle's values for them.
//
// Thread-compatible.
#ifndef FEDTAIL_COMMON_PRIVACY_QUANTIZE_H_
#define FEDTAIL_COMMON_PRIVACY_QUANTIZE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::privacy {

struct QuantizeParams {
  double clip = 1.0;  // c: the bound on each weighted change, > 0
  int bits = 20;      // 1..31
};

// kInvalidArgument (naming "config.secagg.<field>") unless c > 0 and finite, 1 <= bits <= 31,
// and `max_clients` inputs can be summed without overflow: max_clients · (2^bits - 1) < 2^32.
Status check_quantize_params(const QuantizeParams& params, int64_t max_clients);

// The words of the secure input of bundles shaped like `reference`: its floating-point tensors,
// in order.
int64_t secure_words(const TensorBundle& reference);

// The secure input of `update` against `base` with weight `weight` in (0, 1]: secure_words(base)
// words. `update` must hold every floating-point tensor of `base` with the same dtype and shape
// (other tensors are ignored). *clamped (may be null) gets the number of values that were clamped.
Result<std::vector<uint32_t>> quantize_update(const TensorBundle& update, const TensorBundle& base,
                                              double weight, const QuantizeParams& params,
                                              int64_t* clamped);

// The masked words as a bundle to upload: one int32 tensor per floating-point tensor of `base`,
// same name and shape, holding the words' bits. kInvalidArgument when the sizes differ.
Result<TensorBundle> words_to_bundle(const std::vector<uint32_t>& words, const TensorBundle& base);
// A bundle with the names, shapes and int32 dtype words_to_bundle gives (values zero): what the
// coordinator expects of a masked upload (TaskSpec::expected_update).
Result<TensorBundle> masked_layout(const TensorBundle& base);

// sum[i] += masked words, modulo 2^32. `masked` must have masked_layout(base)'s tensors in order.
Status add_words(const TensorBundle& masked, uint32_t* sum, size_t n);

// The aggregate: `base` with each floating-point value replaced by
//   g + (Σq · 2c / (2^bits - 1) - contributors · c) / weight_sum,
// i.e. the weighted mean change added to the base; other tensors copied from `base`. The words
// are the unmasked sum of `contributors` inputs. kInvalidArgument on a size mismatch or
// weight_sum <= 0.
Result<TensorBundle> dequantize_mean(const uint32_t* sum, size_t n, int64_t contributors,
                                     double weight_sum, const TensorBundle& base,
                                     const QuantizeParams& params);

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_QUANTIZE_H_
