// TensorBundle: an ordered set of named tensors plus a JSON metadata object — the unit that travels
// between coordinator and clients (global models, updates, prototypes) and that checkpoints hold.
//
// Torch-free on purpose: the coordinator validates and aggregates bundles without LibTorch on its
// hot paths (common/learning/torch_bundle.h converts to and from torch::Tensor). A NamedTensor owns
// one contiguous, 64-byte-aligned, little-endian, row-major byte buffer; typed views are plain
// pointers into it.
//
// Both classes are move-only values: moves are O(1) and never copy tensor bytes; clone() is the
// explicit deep copy. Thread-compatible: distinct objects may be used from distinct threads, and
// const methods may run concurrently on one object; a mutating call needs exclusive access.
#ifndef FEDTAIL_COMMON_WIRE_TENSOR_BUNDLE_H_
#define FEDTAIL_COMMON_WIRE_TENSOR_BUNDLE_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "common/base/status.h"
#include "common/wire/dtype.h"

namespace fedtail {

// Owner of a buffer from NamedTensor::release_buffer(): gives it back to the buffer pool
// (common/base/buffer_pool.h), which recycles large buffers. `bytes` is the buffer's allocated
// size.
struct AlignedFree {
  size_t bytes = 0;
  void operator()(uint8_t* p) const;
};
using AlignedBuffer = std::unique_ptr<uint8_t[], AlignedFree>;

// One named tensor. Its name and shape are fixed at construction; its bytes are mutable.
class NamedTensor {
 public:
  // Buffer alignment in bytes (a cache line; enough for any SIMD load).
  static constexpr size_t kAlignment = 64;

  // An unnamed float32 tensor of shape [0] without a buffer (bytes() is null). Only assignment
  // and destruction are meaningful on it, as on a moved-from NamedTensor.
  NamedTensor() = default;

  // A zero-filled tensor. kInvalidArgument on a bad shape (see checked_numel) or an empty name;
  // kResourceExhausted when the buffer cannot be allocated.
  static Result<NamedTensor> zeros(std::string name, DType dtype, std::vector<int64_t> shape);
  // Same, but the contents are unspecified: for code that overwrites every byte (decoders).
  static Result<NamedTensor> uninitialized(std::string name, DType dtype,
                                           std::vector<int64_t> shape);
  // A tensor holding a copy of `values` (numel must equal values.size(), T must match dtype:
  // see dtype_matches). Preconditions are checked (FEDTAIL_CHECK): for tests and small constants.
  template <typename T>
  static NamedTensor from_values(std::string name, DType dtype, std::vector<int64_t> shape,
                                 const std::vector<T>& values);

  NamedTensor(NamedTensor&&) noexcept = default;
  NamedTensor& operator=(NamedTensor&&) noexcept = default;
  NamedTensor(const NamedTensor&) = delete;
  NamedTensor& operator=(const NamedTensor&) = delete;

  // A deep copy. Aborts (FEDTAIL_CHECK) if memory for the copy cannot be allocated.
  NamedTensor clone() const;

  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t numel() const { return numel_; }
  uint64_t nbytes() const { return static_cast<uint64_t>(numel_) * dtype_size(dtype_); }

  // The raw bytes: nbytes() of them, kAlignment-aligned; never null for a tensor made by
  // zeros/uninitialized/from_values/clone, even when nbytes() is 0.
  const uint8_t* bytes() const { return buffer_.get(); }
  uint8_t* mutable_bytes() { return buffer_.get(); }

  // Typed views: numel() elements. Precondition (FEDTAIL_CHECK): dtype_matches<T>(dtype()).
  template <typename T>
  const T* data() const {
    FEDTAIL_CHECK(dtype_matches<T>(dtype_));
    return reinterpret_cast<const T*>(buffer_.get());
  }
  template <typename T>
  T* data() {
    FEDTAIL_CHECK(dtype_matches<T>(dtype_));
    return reinterpret_cast<T*>(buffer_.get());
  }

  // Byte-for-byte equality of name, dtype, shape and contents (so NaN payloads compare equal).
  bool bitwise_equal(const NamedTensor& other) const;

  // Gives up the buffer (at least nbytes() bytes; its deleter knows the allocated size, and
  // std::free is also allowed); the tensor is then moved-from. For zero-copy hand-over, e.g. to a
  // torch::Tensor (common/learning/torch_bundle.h).
  AlignedBuffer release_buffer() &&;

 private:
  static Result<NamedTensor> allocate(std::string name, DType dtype, std::vector<int64_t> shape,
                                      bool zero);

  std::string name_;
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_ = {0};
  int64_t numel_ = 0;
  AlignedBuffer buffer_;
};

// An ordered collection of uniquely named tensors plus a JSON metadata object.
//
// Insertion order is the wire order and the iteration order. Lookup by name is O(1) (hashed; the
// hash order never leaks into any output). The metadata is a JSON object (strategy, round,
// metrics...); it starts as {} and must stay an object: encoding a bundle whose metadata is
// neither an object nor null is a bug (FEDTAIL_CHECK in BundleEncoder).
class TensorBundle {
 public:
  TensorBundle() = default;
  TensorBundle(TensorBundle&&) noexcept = default;
  TensorBundle& operator=(TensorBundle&&) noexcept = default;
  TensorBundle(const TensorBundle&) = delete;
  TensorBundle& operator=(const TensorBundle&) = delete;

  // A deep copy (tensors and metadata). Aborts if memory cannot be allocated (see NamedTensor).
  TensorBundle clone() const;

  // Appends `tensor`. kInvalidArgument (naming it) when its name is empty or already present; the
  // bundle is then unchanged.
  Status add(NamedTensor tensor);
  // Appends a zero-filled tensor and returns a pointer to it, valid until the bundle is next
  // modified (add/clear) or destroyed. Errors as NamedTensor::zeros and add().
  Result<NamedTensor*> add_zeros(std::string name, DType dtype, std::vector<int64_t> shape);

  size_t size() const { return tensors_.size(); }
  bool empty() const { return tensors_.empty(); }
  // Tensor `i` in insertion order. Precondition (FEDTAIL_CHECK): i < size().
  const NamedTensor& at(size_t i) const;
  NamedTensor& at(size_t i);
  // The tensor called `name`, or nullptr. The pointer is valid until the bundle is next modified.
  const NamedTensor* find(std::string_view name) const;
  NamedTensor* find(std::string_view name);
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  // Tensor names in insertion order.
  std::vector<std::string> names() const;

  std::vector<NamedTensor>::const_iterator begin() const { return tensors_.begin(); }
  std::vector<NamedTensor>::const_iterator end() const { return tensors_.end(); }
  std::vector<NamedTensor>::iterator begin() { return tensors_.begin(); }
  std::vector<NamedTensor>::iterator end() { return tensors_.end(); }

  const nlohmann::json& metadata() const { return metadata_; }
  // Mutable metadata; keep it a JSON object (assigning keys to it does).
  nlohmann::json& mutable_metadata() { return metadata_; }
  // Replaces the metadata; kInvalidArgument when `metadata` is not an object (null counts as {}).
  Status set_metadata(nlohmann::json metadata);

  // Sum of nbytes() over the tensors: the size of the wire payload.
  uint64_t payload_bytes() const;

  // Removes every tensor and resets the metadata to {}.
  void clear();

  // Same tensors in the same order, byte for byte, and equal metadata.
  bool bitwise_equal(const TensorBundle& other) const;

 private:
  std::vector<NamedTensor> tensors_;
  // name -> index into tensors_. Keys are copies of the names (tensors_ may reallocate).
  std::unordered_map<std::string, size_t> index_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// ---- Implementation details below ----

template <typename T>
NamedTensor NamedTensor::from_values(std::string name, DType dtype, std::vector<int64_t> shape,
                                     const std::vector<T>& values) {
  FEDTAIL_CHECK(dtype_matches<T>(dtype));
  Result<NamedTensor> t = uninitialized(std::move(name), dtype, std::move(shape));
  FEDTAIL_CHECK(t.ok());
  FEDTAIL_CHECK(static_cast<size_t>(t->numel()) == values.size());
  T* out = t->template data<T>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return std::move(t).value();
}

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_TENSOR_BUNDLE_H_
