// Element access to floating-point tensors of any of the four float dtypes, through double: for
// code that computes on every float type alike (robust aggregation, server optimisers, secure
// aggregation's fixed point). Header-only and inline: called once per element on hot paths.
#ifndef FEDTAIL_COMMON_WIRE_FLOAT_ELEMENTS_H_
#define FEDTAIL_COMMON_WIRE_FLOAT_ELEMENTS_H_

#include <cstdint>

#include "common/base/status.h"
#include "common/wire/dtype.h"

namespace fedtail {

// Element i of a floating-point tensor's bytes, widened to double (exactly). Precondition
// (FEDTAIL_CHECK): dtype_is_floating(dtype).
inline double load_float(DType dtype, const uint8_t* bytes, int64_t i) {
  switch (dtype) {
    case DType::kFloat32:
      return reinterpret_cast<const float*>(bytes)[i];
    case DType::kFloat64:
      return reinterpret_cast<const double*>(bytes)[i];
    case DType::kFloat16:
      return half_to_float(reinterpret_cast<const uint16_t*>(bytes)[i]);
    case DType::kBFloat16:
      return bfloat16_to_float(reinterpret_cast<const uint16_t*>(bytes)[i]);
    default:
      FEDTAIL_CHECK(false);
      return 0;
  }
}

// Rounds `value` to the dtype and stores it as element i (half types round through float).
// Precondition (FEDTAIL_CHECK): dtype_is_floating(dtype).
inline void store_float(DType dtype, uint8_t* bytes, int64_t i, double value) {
  switch (dtype) {
    case DType::kFloat32:
      reinterpret_cast<float*>(bytes)[i] = static_cast<float>(value);
      break;
    case DType::kFloat64:
      reinterpret_cast<double*>(bytes)[i] = value;
      break;
    case DType::kFloat16:
      reinterpret_cast<uint16_t*>(bytes)[i] = float_to_half(static_cast<float>(value));
      break;
    case DType::kBFloat16:
      reinterpret_cast<uint16_t*>(bytes)[i] = float_to_bfloat16(static_cast<float>(value));
      break;
    default:
      FEDTAIL_CHECK(false);
  }
}

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_FLOAT_ELEMENTS_H_
