#include "common/learning/torch_bundle.h"

#include <torch/torch.h>

#include <cstring>
#include <unordered_set>
#include <utility>

#include "common/base/buffer_pool.h"

namespace fedtail {

torch::Dtype dtype_to_torch(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return torch::kFloat32;
    case DType::kFloat64:
      return torch::kFloat64;
    case DType::kFloat16:
      return torch::kFloat16;
    case DType::kBFloat16:
      return torch::kBFloat16;
    case DType::kInt64:
      return torch::kInt64;
    case DType::kInt32:
      return torch::kInt32;
    case DType::kUInt8:
      return torch::kUInt8;
    case DType::kBool:
      return torch::kBool;
  }
  FEDTAIL_CHECK(false && "unknown DType");
  return torch::kFloat32;
}

Result<DType> dtype_from_torch(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return DType::kFloat32;
    case torch::kFloat64:
      return DType::kFloat64;
    case torch::kFloat16:
      return DType::kFloat16;
    case torch::kBFloat16:
      return DType::kBFloat16;
    case torch::kInt64:
      return DType::kInt64;
    case torch::kInt32:
      return DType::kInt32;
    case torch::kUInt8:
      return DType::kUInt8;
    case torch::kBool:
      return DType::kBool;
    default:
      break;
  }
  return Status::InvalidArgument(std::string("unsupported torch dtype ") + c10::toString(dtype));
}

namespace {

// A CPU tensor viewing `t`'s buffer (no copy, no ownership): valid while `t` lives.
torch::Tensor view_of(const NamedTensor& t) {
  return torch::from_blob(const_cast<uint8_t*>(t.bytes()), t.shape(),
                          torch::TensorOptions().dtype(dtype_to_torch(t.dtype())));
}

std::string torch_spec(const torch::Tensor& t) {
  return std::string(c10::toString(t.scalar_type())) + " " + shape_to_string(t.sizes().vec());
}

}  // namespace

Result<NamedTensor> from_torch(std::string name, const torch::Tensor& tensor) {
  const std::string where = "tensor \"" + name + "\"";
  if (!tensor.defined()) return Status::InvalidArgument(where + ": undefined tensor");
  if (tensor.layout() != torch::kStrided) {
    return Status::InvalidArgument(where + ": only dense (strided) tensors can be bundled");
  }
  Result<DType> dtype = dtype_from_torch(tensor.scalar_type());
  if (!dtype.ok()) return dtype.status().with_context(where);
  FEDTAIL_ASSIGN_OR_RETURN(
      NamedTensor out, NamedTensor::uninitialized(std::move(name), *dtype, tensor.sizes().vec()));
  if (out.numel() == 0) return out;
  try {
    torch::NoGradGuard no_grad;
    // One copy, whatever the device or strides: straight into the bundle's buffer.
    view_of(out).copy_(tensor.detach());
  } catch (const c10::Error& e) {
    return Status::Internal(where + ": copy to host failed: " + e.what_without_backtrace());
  }
  return out;
}

torch::Tensor to_torch(const NamedTensor& tensor) {
  torch::Tensor out =
      torch::empty(tensor.shape(), torch::TensorOptions().dtype(dtype_to_torch(tensor.dtype())));
  if (tensor.nbytes() > 0) std::memcpy(out.data_ptr(), tensor.bytes(), tensor.nbytes());
  return out;
}

torch::Tensor to_torch(NamedTensor&& tensor) {
  const std::vector<int64_t> shape = tensor.shape();
  const torch::Dtype dtype = dtype_to_torch(tensor.dtype());
  AlignedBuffer buffer = std::move(tensor).release_buffer();
  if (!buffer) return torch::empty(shape, torch::TensorOptions().dtype(dtype));
  uint8_t* data = buffer.get();
  // The buffer goes back to the pool when torch frees the tensor (common/base/buffer_pool.h).
  const size_t bytes = buffer.get_deleter().bytes;
  torch::Tensor out = torch::from_blob(
      data, shape, [bytes](void* p) { release_pooled_buffer(p, bytes); },
      torch::TensorOptions().dtype(dtype));
  buffer.release();  // now owned by `out`'s deleter
  return out;
}

namespace {

// The module's tensors in state_dict order: per submodule in pre-order, parameters then buffers.
std::vector<std::pair<std::string, torch::Tensor>> state_tensors(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  module.apply([&out](const std::string& prefix, const torch::nn::Module& m) {
    auto join = [&prefix](const std::string& key) {
      return prefix.empty() ? key : prefix + "." + key;
    };
    for (const auto& p : m.named_parameters(/*recurse=*/false)) {
      if (p.value().defined()) out.emplace_back(join(p.key()), p.value());
    }
    for (const auto& b : m.named_buffers(/*recurse=*/false)) {
      if (b.value().defined()) out.emplace_back(join(b.key()), b.value());
    }
  });
  return out;
}

bool has_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return true;
  for (const std::string& p : prefixes) {
    if (name.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

}  // namespace

Result<TensorBundle> module_state(const torch::nn::Module& module,
                                  const std::vector<std::string>& prefixes) {
  TensorBundle bundle;
  for (auto& [name, tensor] : state_tensors(module)) {
    if (!has_prefix(name, prefixes)) continue;
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t, from_torch(name, tensor));
    Status added = bundle.add(std::move(t));
    // A module whose traversal yields one name twice (a registered name containing '.') cannot
    // be represented.
    if (!added.ok()) return added;
  }
  return bundle;
}

Status load_module_state(torch::nn::Module& module, const TensorBundle& bundle, bool strict) {
  std::vector<std::pair<std::string, torch::Tensor>> targets = state_tensors(module);
  // Pass 1: check, so that a failed load leaves the module untouched.
  std::vector<std::pair<const NamedTensor*, torch::Tensor*>> copies;
  copies.reserve(targets.size());
  size_t matched = 0;
  for (auto& [name, target] : targets) {
    const NamedTensor* source = bundle.find(name);
    if (source == nullptr) {
      if (strict) {
        return Status::NotFound("tensor \"" + name + "\": missing from the bundle (module has " +
                                torch_spec(target) + ")");
      }
      continue;
    }
    ++matched;
    const torch::Dtype want = dtype_to_torch(source->dtype());
    if (target.scalar_type() != want || target.sizes().vec() != source->shape()) {
      return Status::InvalidArgument(
          "tensor \"" + name + "\": bundle has " + dtype_name(source->dtype()) + " " +
          shape_to_string(source->shape()) + ", module has " + torch_spec(target));
    }
    copies.emplace_back(source, &target);
  }
  if (strict && matched != bundle.size()) {
    std::unordered_set<std::string> module_names;
    for (const auto& target : targets) module_names.insert(target.first);
    for (const NamedTensor& t : bundle) {
      if (module_names.count(t.name()) == 0) {
        return Status::InvalidArgument("tensor \"" + t.name() + "\": not in the module");
      }
    }
  }
  // Pass 2: copy.
  try {
    torch::NoGradGuard no_grad;
    for (auto& [source, target] : copies) {
      if (source->numel() > 0) target->copy_(view_of(*source));
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("load_module_state: copy failed: ") +
                            e.what_without_backtrace());
  }
  return Status::OK();
}

}  // namespace fedtail
