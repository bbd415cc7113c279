#include "common/wire/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace fedtail {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat64:
      return 8;
    case DType::kFloat16:
      return 2;
    case DType::kBFloat16:
      return 2;
    case DType::kInt64:
      return 8;
    case DType::kInt32:
      return 4;
    case DType::kUInt8:
      return 1;
    case DType::kBool:
      return 1;
  }
  FEDTAIL_CHECK(false && "unknown DType");
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kInt64:
      return "int64";
    case DType::kInt32:
      return "int32";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
  }
  return "unknown";
}

Result<DType> dtype_from_name(std::string_view name) {
  static constexpr DType kAll[] = {DType::kFloat32,  DType::kFloat64, DType::kFloat16,
                                   DType::kBFloat16, DType::kInt64,   DType::kInt32,
                                   DType::kUInt8,    DType::kBool};
  for (DType d : kAll) {
    if (name == dtype_name(d)) return d;
  }
  return Status::InvalidArgument("unknown dtype \"" + std::string(name) + "\"");
}

bool dtype_is_floating(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kFloat16 ||
         dtype == DType::kBFloat16;
}

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace

float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa × 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t float_to_half(float value) {
  // Round-to-nearest-even conversion (after F. Giesen's float_to_half_fast3_rtne).
  uint32_t f = float_bits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  constexpr uint32_t kF32Infinity = 255u << 23;
  constexpr uint32_t kF16Overflow = (127u + 16u) << 23;  // 2^16: rounds to Inf in half
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint16_t out;
  if (f >= kF16Overflow) {
    out = f > kF32Infinity ? 0x7e00 : 0x7c00;  // NaN stays a (quiet) NaN; the rest is Inf
  } else if (f < (113u << 23)) {
    // Result is subnormal or zero: let the FPU round by adding a magic number.
    const float sum = bits_float(f) + bits_float(kDenormMagic);
    out = static_cast<uint16_t>(float_bits(sum) - kDenormMagic);
  } else {
    const uint32_t mantissa_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mantissa_odd;
    out = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

float bfloat16_to_float(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

uint16_t float_to_bfloat16(float value) {
  const uint32_t f = float_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((f >> 16) & 1u);
  return static_cast<uint16_t>((f + rounding) >> 16);
}

Result<int64_t> checked_numel(DType dtype, const std::vector<int64_t>& shape) {
  if (shape.size() > kMaxTensorRank) {
    return Status::InvalidArgument("shape has rank " + std::to_string(shape.size()) + " (at most " +
                                   std::to_string(kMaxTensorRank) + ")");
  }
  int64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return Status::InvalidArgument("shape " + shape_to_string(shape) + ": dimension " +
                                     std::to_string(i) + " is negative");
    }
    if (__builtin_mul_overflow(numel, shape[i], &numel)) {
      return Status::InvalidArgument("shape " + shape_to_string(shape) +
                                     ": element count overflows int64");
    }
  }
  int64_t nbytes;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(dtype)), &nbytes)) {
    return Status::InvalidArgument("shape " + shape_to_string(shape) +
                                   ": byte size overflows int64");
  }
  return numel;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(shape[i]);
  }
  out += ']';
  return out;
}

}  // namespace fedtail
