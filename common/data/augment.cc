#include "common/data/augment.h"

#include <torch/torch.h>

#include "common/base/json_reader.h"

namespace fedtail {

Result<AugmentOptions> parse_augment_options(const nlohmann::json& json, const std::string& path) {
  AugmentOptions options;
  JsonReader r(json, path);
  r.read("crop_padding", &options.crop_padding);
  r.check(options.crop_padding >= 0, "crop_padding",
          "must be >= 0 (got " + std::to_string(options.crop_padding) + "); 0 = no crop");
  r.read("horizontal_flip", &options.horizontal_flip);
  r.read("normalize", &options.normalize);
  r.read("mean", &options.mean);
  r.read("std", &options.std);
  for (double s : options.std) r.check(s > 0, "std", "every value must be > 0");
  r.check(options.mean.size() == options.std.size(), "std",
          "must have as many values as mean (" + std::to_string(options.mean.size()) + ", got " +
              std::to_string(options.std.size()) + ")");
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return options;
}

Result<Augmenter> Augmenter::create(const AugmentOptions& options, int64_t channels,
                                    torch::Device device) {
  if (options.crop_padding < 0) {
    return Status::InvalidArgument("augment.crop_padding: must be >= 0 (got " +
                                   std::to_string(options.crop_padding) + ")");
  }
  auto per_channel = [&](const std::vector<double>& values, const char* name,
                         std::vector<double>* out) -> Status {
    if (values.empty()) {
      out->assign(channels, 0.5);
    } else if (values.size() == 1) {
      out->assign(channels, values[0]);
    } else if (static_cast<int64_t>(values.size()) == channels) {
      *out = values;
    } else {
      return Status::InvalidArgument("augment." + std::string(name) + ": expected 1 or " +
                                     std::to_string(channels) + " values for " +
                                     std::to_string(channels) + "-channel images (got " +
                                     std::to_string(values.size()) + ")");
    }
    return Status::OK();
  };
  std::vector<double> mean, std;
  FEDTAIL_RETURN_IF_ERROR(per_channel(options.mean, "mean", &mean));
  FEDTAIL_RETURN_IF_ERROR(per_channel(options.std, "std", &std));
  std::vector<float> offset(channels), scale(channels);
  for (int64_t c = 0; c < channels; ++c) {
    if (!(std[c] > 0)) return Status::InvalidArgument("augment.std: every value must be > 0");
    offset[c] = options.normalize ? static_cast<float>(255.0 * mean[c]) : 0.0f;
    scale[c] = static_cast<float>(1.0 / (255.0 * (options.normalize ? std[c] : 1.0)));
  }
  try {
    auto to_tensor = [&](const std::vector<float>& v) {
      return torch::tensor(v, torch::kFloat32).view({1, channels, 1, 1}).to(device);
    };
    return Augmenter(options, device, to_tensor(offset), to_tensor(scale));
  } catch (const std::exception& e) {
    return Status::Internal(std::string("augment: ") + e.what());
  }
}

torch::Tensor Augmenter::normalize(const torch::Tensor& images_on_device) const {
  return (images_on_device.to(torch::kFloat32) - offset_) * scale_;
}

torch::Tensor Augmenter::eval_batch(const torch::Tensor& images) const {
  return normalize(images.to(device_));
}

torch::Tensor Augmenter::train_batch(const torch::Tensor& images, Rng& rng) const {
  TORCH_CHECK(images.dim() == 4, "augment: expected B×C×H×W images, got ", images.sizes());
  auto x = images.to(device_);
  const int64_t pad = options_.crop_padding;
  if (pad == 0 && !options_.horizontal_flip) return normalize(x);

  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  // Per-sample choices, drawn on the host from the Rng (deterministic on every device).
  std::vector<int64_t> dy(b, 0), dx(b, 0), flip(b, 0);
  for (int64_t i = 0; i < b; ++i) {
    if (pad > 0) {
      dy[i] = static_cast<int64_t>(rng.uniform_int(2 * pad + 1));
      dx[i] = static_cast<int64_t>(rng.uniform_int(2 * pad + 1));
    }
    if (options_.horizontal_flip) flip[i] = static_cast<int64_t>(rng.uniform_int(2));
  }
  auto long_on_device = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  auto to_device = [&](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kInt64).to(device_);
  };
  // Source row of output row r in sample i: dy[i] + r. Source column of output column j:
  // dx[i] + j, or dx[i] + (w - 1 - j) when the sample is flipped, so one gather does crop + flip.
  auto rows = to_device(dy).view({b, 1}) + torch::arange(h, long_on_device).view({1, h});
  auto ramp = torch::arange(w, long_on_device).view({1, w});
  auto cols = torch::where(to_device(flip).view({b, 1}).to(torch::kBool), (w - 1) - ramp, ramp) +
              to_device(dx).view({b, 1});
  if (pad > 0) x = torch::constant_pad_nd(x, {pad, pad, pad, pad}, /*value=*/0);
  const int64_t padded_w = w + 2 * pad;
  x = torch::gather(x, /*dim=*/2, rows.view({b, 1, h, 1}).expand({b, c, h, padded_w}));
  x = torch::gather(x, /*dim=*/3, cols.view({b, 1, 1, w}).expand({b, c, h, w}));
  return normalize(x);
}

}  // namespace fedtail
