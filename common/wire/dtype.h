// Element types and shapes of the tensors fedtail moves: DType, its sizes and names, the C++ types
// that view each, IEEE half / bfloat16 conversions, and overflow-checked element counts for buffers
// sized from untrusted input. Torch-free, like the rest of common/wire.
#ifndef FEDTAIL_COMMON_WIRE_DTYPE_H_
#define FEDTAIL_COMMON_WIRE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/base/status.h"

namespace fedtail {

// Element types a bundle can carry. The wire enum (fedtail.v1.DType) maps one to one.
enum class DType : uint8_t {
  kFloat32,
  kFloat64,
  kFloat16,
  kBFloat16,
  kInt64,
  kInt32,
  kUInt8,
  kBool
};

// Bytes per element: 4, 8, 2, 2, 8, 4, 1, 1.
size_t dtype_size(DType dtype);
// "float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool".
const char* dtype_name(DType dtype);
// The inverse of dtype_name; kInvalidArgument naming `name` when it is not one of them.
Result<DType> dtype_from_name(std::string_view name);
// True for the four floating-point types.
bool dtype_is_floating(DType dtype);

// The C++ element types that may view each dtype through NamedTensor::data<T>(). float16 and
// bfloat16 have no C++ type: view them as uint16_t bit patterns and convert with the helpers below.
template <typename T>
bool dtype_matches(DType dtype) {
  if constexpr (std::is_same_v<T, float>) return dtype == DType::kFloat32;
  if constexpr (std::is_same_v<T, double>) return dtype == DType::kFloat64;
  if constexpr (std::is_same_v<T, uint16_t>) {
    return dtype == DType::kFloat16 || dtype == DType::kBFloat16;
  }
  if constexpr (std::is_same_v<T, int64_t>) return dtype == DType::kInt64;
  if constexpr (std::is_same_v<T, int32_t>) return dtype == DType::kInt32;
  if constexpr (std::is_same_v<T, uint8_t>) return dtype == DType::kUInt8 || dtype == DType::kBool;
  if constexpr (std::is_same_v<T, bool>) return dtype == DType::kBool;
  return false;
}

// IEEE half and bfloat16 conversions. To-float is exact; from-float rounds to nearest even and
// keeps NaN a NaN and ±Inf infinite (values beyond the half range become ±Inf).
float half_to_float(uint16_t bits);
uint16_t float_to_half(float value);
float bfloat16_to_float(uint16_t bits);
uint16_t float_to_bfloat16(float value);

// Largest rank a tensor may have (LibTorch's own limit is 64 as well).
constexpr size_t kMaxTensorRank = 64;

// Number of elements of `shape` (1 for a scalar, shape {}). kInvalidArgument when a dimension is
// negative, the rank exceeds kMaxTensorRank, or the count or its byte size (numel × dtype_size)
// overflows int64. Used by everything that sizes a buffer from untrusted input.
Result<int64_t> checked_numel(DType dtype, const std::vector<int64_t>& shape);

// "[10,64]"; "[]" for a scalar.
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_DTYPE_H_
