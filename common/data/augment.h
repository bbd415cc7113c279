// Batch augmentation and input normalisation: uint8 images in, float model inputs out.
//
// Everything runs on whole batches on the target device (one pad, one gather, one flip mask):
// no per-sample loops. Training batches get a random crop (zero padding, then a per-sample
// window) and a random horizontal flip; evaluation batches are only converted and normalised.
// The same AugmentOptions must be used for training and evaluation so inputs are normalised alike.
#ifndef FEDTAIL_COMMON_DATA_AUGMENT_H_
#define FEDTAIL_COMMON_DATA_AUGMENT_H_

#include <torch/types.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"

namespace fedtail {

struct AugmentOptions {
  // Random crop: pad each side with this many zero pixels, then cut a window of the original size
  // at a uniformly random offset per sample. 0 = no crop. Default 4 (the CIFAR recipe).
  int crop_padding = 4;
  // Mirror each training sample left-right with probability 1/2. Default true. It applies to every
  // dataset, 1-channel 28×28 ones included; set it to false in the config where mirroring changes
  // the class (digits, text).
  bool horizontal_flip = true;
  // Map pixel p (0..255) to (p/255 - mean[c]) / std[c]. false: p/255 only. Default true.
  bool normalize = true;
  // Per-channel mean and standard deviation, in [0, 1] pixel units: one value (used for every
  // channel) or one per channel. Empty (default) = 0.5 and 0.5, which maps pixels to [-1, 1].
  std::vector<double> mean;
  std::vector<double> std;
};

// Reads the "augment" object at `path` (e.g. "config.local.augment"): keys crop_padding,
// horizontal_flip, normalize, mean, std, all optional. kInvalidArgument naming the field for a
// wrong type, an unknown key, crop_padding < 0, std <= 0, or mean and std of different lengths.
Result<AugmentOptions> parse_augment_options(const nlohmann::json& json, const std::string& path);

// Turns uint8 B×C×H×W batches into float model inputs on one device. Built once per (options,
// channel count, device); const methods, safe to call from several threads at once with distinct
// Rngs.
class Augmenter {
 public:
  // kInvalidArgument when mean/std have neither 1 nor `channels` entries, or a std is <= 0, or
  // crop_padding < 0. kInternal on a LibTorch failure (e.g. an unusable device).
  static Result<Augmenter> create(const AugmentOptions& options, int64_t channels,
                                  torch::Device device);

  // Training path: moves `images` (uint8 B×C×H×W, any device) to the device, applies the random
  // crop and flip with offsets and flip choices drawn from `rng` (3 draws per sample when both are
  // on), converts and normalises. Returns float B×C×H×W on the device. May throw c10::Error on a
  // wrong shape or dtype (callers convert it at their boundary).
  torch::Tensor train_batch(const torch::Tensor& images, Rng& rng) const;
  // Evaluation path: convert and normalise only. Never draws randomness.
  torch::Tensor eval_batch(const torch::Tensor& images) const;

  const AugmentOptions& options() const { return options_; }
  torch::Device device() const { return device_; }

 private:
  Augmenter(AugmentOptions options, torch::Device device, torch::Tensor offset, torch::Tensor scale)
      : options_(std::move(options)), device_(device), offset_(offset), scale_(scale) {}

  // uint8 → float on device_: (x - offset_) * scale_.
  torch::Tensor normalize(const torch::Tensor& images_on_device) const;

  // Constant after construction.
  AugmentOptions options_;
  torch::Device device_;
  torch::Tensor offset_;  // float 1×C×1×1 on device_: 255 · mean
  torch::Tensor scale_;   // float 1×C×1×1 on device_: 1 / (255 · std)
};

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_AUGMENT_H_
