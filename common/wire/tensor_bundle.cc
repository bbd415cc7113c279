#include "common/wire/tensor_bundle.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "common/base/buffer_pool.h"

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

// ---- NamedTensor ----

void AlignedFree::operator()(uint8_t* p) const { release_pooled_buffer(p, bytes); }

Result<NamedTensor> NamedTensor::allocate(std::string name, DType dtype, std::vector<int64_t> shape,
                                          bool zero) {
  if (name.empty()) return Status::InvalidArgument("tensor name must not be empty");
  Result<int64_t> numel = checked_numel(dtype, shape);
  if (!numel.ok()) return numel.status().with_context("tensor \"" + name + "\"");
  const uint64_t nbytes = static_cast<uint64_t>(*numel) * dtype_size(dtype);
  // At least one line, so that bytes() is never null. Large buffers come from the buffer pool's
  // cache when one of the same size was freed (common/base/buffer_pool.h: no page faults then).
  const uint64_t size =
      std::max<uint64_t>(kAlignment, (nbytes + kAlignment - 1) & ~(kAlignment - 1));
  if (size < nbytes || size > std::numeric_limits<size_t>::max()) {
    return Status::ResourceExhausted("tensor \"" + name + "\": " + std::to_string(nbytes) +
                                     " bytes cannot be allocated");
  }
  void* p = acquire_pooled_buffer(static_cast<size_t>(size));
  if (p == nullptr) {
    return Status::ResourceExhausted("tensor \"" + name + "\": out of memory allocating " +
                                     std::to_string(nbytes) + " bytes");
  }
  if (zero) std::memset(p, 0, static_cast<size_t>(nbytes));
  NamedTensor t;
  t.name_ = std::move(name);
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = *numel;
  t.buffer_ = AlignedBuffer(static_cast<uint8_t*>(p), AlignedFree{static_cast<size_t>(size)});
  return t;
}

Result<NamedTensor> NamedTensor::zeros(std::string name, DType dtype, std::vector<int64_t> shape) {
  return allocate(std::move(name), dtype, std::move(shape), /*zero=*/true);
}

Result<NamedTensor> NamedTensor::uninitialized(std::string name, DType dtype,
                                               std::vector<int64_t> shape) {
  return allocate(std::move(name), dtype, std::move(shape), /*zero=*/false);
}

NamedTensor NamedTensor::clone() const {
  if (!buffer_) {
    NamedTensor t;
    t.name_ = name_;
    t.dtype_ = dtype_;
    t.shape_ = shape_;
    return t;
  }
  Result<NamedTensor> copy = uninitialized(name_, dtype_, shape_);
  FEDTAIL_CHECK(copy.ok());
  if (nbytes() > 0) std::memcpy(copy->mutable_bytes(), bytes(), nbytes());
  return std::move(copy).value();
}

bool NamedTensor::bitwise_equal(const NamedTensor& other) const {
  if (name_ != other.name_ || dtype_ != other.dtype_ || shape_ != other.shape_) return false;
  if (nbytes() == 0) return true;
  if (!buffer_ || !other.buffer_) return buffer_ == other.buffer_;
  return std::memcmp(bytes(), other.bytes(), nbytes()) == 0;
}

AlignedBuffer NamedTensor::release_buffer() && { return std::move(buffer_); }

// ---- TensorBundle ----

TensorBundle TensorBundle::clone() const {
  TensorBundle copy;
  copy.tensors_.reserve(tensors_.size());
  for (const NamedTensor& t : tensors_) copy.tensors_.push_back(t.clone());
  copy.index_ = index_;
  copy.metadata_ = metadata_;
  return copy;
}

Status TensorBundle::add(NamedTensor tensor) {
  if (tensor.name().empty()) return Status::InvalidArgument("tensor name must not be empty");
  auto inserted = index_.emplace(tensor.name(), tensors_.size());
  if (!inserted.second) {
    return Status::InvalidArgument("tensor \"" + tensor.name() + "\": duplicate name in bundle");
  }
  tensors_.push_back(std::move(tensor));
  return Status::OK();
}

Result<NamedTensor*> TensorBundle::add_zeros(std::string name, DType dtype,
                                             std::vector<int64_t> shape) {
  if (contains(name)) {
    return Status::InvalidArgument("tensor \"" + name + "\": duplicate name in bundle");
  }
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t,
                           NamedTensor::zeros(std::move(name), dtype, std::move(shape)));
  FEDTAIL_RETURN_IF_ERROR(add(std::move(t)));
  return &tensors_.back();
}

const NamedTensor& TensorBundle::at(size_t i) const {
  FEDTAIL_CHECK(i < tensors_.size());
  return tensors_[i];
}

NamedTensor& TensorBundle::at(size_t i) {
  FEDTAIL_CHECK(i < tensors_.size());
  return tensors_[i];
}

const NamedTensor* TensorBundle::find(std::string_view name) const {
  // C++17's unordered_map has no heterogeneous lookup; the key copy is small next to a tensor.
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

NamedTensor* TensorBundle::find(std::string_view name) {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> TensorBundle::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const NamedTensor& t : tensors_) out.push_back(t.name());
  return out;
}

Status TensorBundle::set_metadata(nlohmann::json metadata) {
  if (metadata.is_null()) metadata = nlohmann::json::object();
  if (!metadata.is_object()) {
    return Status::InvalidArgument(std::string("bundle metadata must be a JSON object (got ") +
                                   metadata.type_name() + ")");
  }
  metadata_ = std::move(metadata);
  return Status::OK();
}

uint64_t TensorBundle::payload_bytes() const {
  uint64_t total = 0;
  for (const NamedTensor& t : tensors_) total += t.nbytes();
  return total;
}

void TensorBundle::clear() {
  tensors_.clear();
  index_.clear();
  metadata_ = nlohmann::json::object();
}

bool TensorBundle::bitwise_equal(const TensorBundle& other) const {
  if (tensors_.size() != other.tensors_.size()) return false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!tensors_[i].bitwise_equal(other.tensors_[i])) return false;
  }
  return metadata_ == other.metadata_;
}

// ---- Checks ----

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
