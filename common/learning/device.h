// Device selection and CPU thread count.
#ifndef FEDTAIL_COMMON_LEARNING_DEVICE_H_
#define FEDTAIL_COMMON_LEARNING_DEVICE_H_

#include <torch/types.h>

#include <string>

#include "common/base/status.h"

namespace fedtail {

// Parses "auto" (CUDA device 0 when LibTorch sees a GPU, else the CPU), "cpu", "cuda" (= cuda:0) or
// "cuda:<i>". kInvalidArgument for any other spelling, for "cuda…" when this LibTorch build or
// machine has no CUDA device, and for an index >= the device count (the message says how many there
// are). Does not initialise a CUDA context beyond counting devices.
Result<torch::Device> parse_device(const std::string& spec);

// "cpu", "cuda:0", ...
std::string device_name(torch::Device device);

// Sets LibTorch's intra-op thread count (GEMM, convolutions). n = 0 means all hardware threads;
// n < 0 is treated as 0. Inter-op threads are left alone: fedtail never runs inter-op parallel work
// and LibTorch forbids changing that pool once it has started. Process-wide: call from main.
void set_num_threads(int n);

// The number of hardware threads (at least 1).
int hardware_threads();

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_DEVICE_H_
