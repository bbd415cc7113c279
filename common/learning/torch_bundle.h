// The bridge between TensorBundle and LibTorch: tensors in and out, and a module's state (its
// parameters and buffers) as a bundle whose names are the module's dotted names ("fc.weight",
// "bn1.running_mean") — the names every strategy sees on the wire.
//
// All functions are thread-safe on distinct objects. None throws: LibTorch exceptions are turned
// into Status values, except in to_torch (LibTorch's own allocation failures propagate as
// c10::Error, as from any torch call; catch them where other torch calls are caught).
#ifndef FEDTAIL_COMMON_LEARNING_TORCH_BUNDLE_H_
#define FEDTAIL_COMMON_LEARNING_TORCH_BUNDLE_H_

#include <torch/types.h>

#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace torch {
namespace nn {
class Module;
}  // namespace nn
}  // namespace torch

namespace fedtail {

// DType <-> torch scalar type. dtype_from_torch: kInvalidArgument for types a bundle cannot carry
// (int8, int16, complex, quantized...), naming the type.
torch::Dtype dtype_to_torch(DType dtype);
Result<DType> dtype_from_torch(torch::Dtype dtype);

// A copy of `tensor` (any device, any strides; autograd history ignored) as a contiguous CPU
// NamedTensor. kInvalidArgument naming `name` for an undefined, sparse or unsupported-dtype tensor;
// kInternal (with LibTorch's message) if the device copy fails.
Result<NamedTensor> from_torch(std::string name, const torch::Tensor& tensor);

// A CPU tensor with `tensor`'s dtype, shape and a copy of its bytes (it does not alias `tensor`).
torch::Tensor to_torch(const NamedTensor& tensor);
// Zero-copy: the returned CPU tensor takes over `tensor`'s buffer (freed when the last torch
// reference goes).
torch::Tensor to_torch(NamedTensor&& tensor);

// The state of `module` as a bundle: for each submodule in pre-order (the module itself first),
// its parameters then its buffers (BatchNorm running_mean/running_var/num_batches_tracked
// included), named as named_parameters()/named_buffers() name them — PyTorch's state_dict order.
// Undefined tensors (e.g. a Linear without bias) are skipped. With `prefixes` non-empty, only
// tensors whose name starts with one of them are kept (use "backbone." for a submodule). The
// bytes are copied to the host. Errors as from_torch, naming the tensor.
Result<TensorBundle> module_state(const torch::nn::Module& module,
                                  const std::vector<std::string>& prefixes = {});

// Copies the bundle's tensors into the module's parameters and buffers of the same names, on
// whatever device those live, without recording autograd history. Checks everything before
// copying anything, so that on error the module is unchanged:
//   - a module tensor absent from the bundle: kNotFound naming it when `strict`, else skipped;
//   - a bundle tensor the module lacks: kInvalidArgument naming it when `strict`, else ignored;
//   - a dtype or shape mismatch: kInvalidArgument naming the tensor and both specs (always).
// kInternal (with LibTorch's message) if a device copy fails.
Status load_module_state(torch::nn::Module& module, const TensorBundle& bundle, bool strict);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_TORCH_BUNDLE_H_
