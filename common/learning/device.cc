#include "common/learning/device.h"

#include <torch/torch.h>

#include <thread>

namespace fedtail {

Result<torch::Device> parse_device(const std::string& spec) {
  const bool has_cuda = torch::cuda::is_available();
  if (spec == "auto") return has_cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec.rfind("cuda", 0) != 0) {
    return Status::InvalidArgument("device: must be auto, cpu, cuda or cuda:<index> (got \"" +
                                   spec + "\")");
  }
  int index = 0;
  if (spec.size() > 4) {
    const std::string digits = spec.substr(5);
    bool valid = spec[4] == ':' && !digits.empty() && digits.size() <= 4;
    for (char c : digits) valid = valid && c >= '0' && c <= '9';
    if (!valid) {
      return Status::InvalidArgument("device: must be auto, cpu, cuda or cuda:<index> (got \"" +
                                     spec + "\")");
    }
    index = std::stoi(digits);
  }
  if (!has_cuda) {
    return Status::InvalidArgument("device: \"" + spec +
                                   "\" requested but no CUDA device is available (LibTorch " +
                                   "built without CUDA, or no GPU visible); use cpu or auto");
  }
  const int count = static_cast<int>(torch::cuda::device_count());
  if (index >= count) {
    return Status::InvalidArgument("device: \"" + spec + "\" is out of range: " +
                                   std::to_string(count) + " CUDA device(s) visible");
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

std::string device_name(torch::Device device) { return device.str(); }

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void set_num_threads(int n) { torch::set_num_threads(n > 0 ? n : hardware_threads()); }

}  // namespace fedtail
