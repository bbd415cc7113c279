#include "common/wire/tensor_bundle.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "common/base/buffer_pool.h"

namespace fedtail {

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

}  // namespace fedtail
