// Checks on bundles that arrive from elsewhere (clients' updates, files): the same tensors as a
// reference, and no NaN or infinity. The coordinator runs them on every upload before a strategy
// sees it.
#ifndef FEDTAIL_COMMON_WIRE_BUNDLE_CHECKS_H_
#define FEDTAIL_COMMON_WIRE_BUNDLE_CHECKS_H_

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail {

// Checks that `update` has exactly the tensors of `reference` (by name; order may differ) with the
// same dtypes and shapes. OK, or kInvalidArgument naming the first offending tensor, e.g.
//   tensor "heads.classifier.weight": shape [10,64] != expected [10,128]
//   tensor "fc.bias": dtype float16 != expected float32
//   tensor "fc.bias": missing (expected float32 [10])
//   tensor "extra": not in the reference
// Tensors are checked in the reference's order, then unexpected ones in the update's order.
Status check_compatible(const TensorBundle& update, const TensorBundle& reference);

// Checks every floating-point tensor (float32/64, float16, bfloat16) for NaN and ±Inf. OK, or
// kCorruption naming the tensor, the first bad flat index and the value, e.g.
//   tensor "fc.weight": non-finite value nan at index 17
// Integer and bool tensors are not inspected. Runs at memory bandwidth (a blocked scan).
Status check_finite(const TensorBundle& bundle);
// The same check for one tensor.
Status check_finite(const NamedTensor& tensor);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_BUNDLE_CHECKS_H_
