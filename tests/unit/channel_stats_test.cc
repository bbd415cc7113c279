// Tests for channel_stats(): per-channel mean/std of pixel/255 over a Dataset.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/data/dataset.h"

namespace fedtail {
namespace {

TEST(ChannelStats, MatchesHandComputedValues) {
  Dataset d;
  // Two 2-channel 1×2 images. Channel 0 holds 0, 255, 255, 255; channel 1 is constant 51.
  d.images = torch::tensor({0, 255, 51, 51, 255, 255, 51, 51}, torch::kUInt8).reshape({2, 2, 1, 2});
  d.labels = torch::zeros({2}, torch::kInt64);
  d.num_classes = 1;
  const ChannelStats s = channel_stats(d);
  ASSERT_EQ(s.mean.size(), 2u);
  EXPECT_DOUBLE_EQ(s.mean[0], 0.75);
  EXPECT_NEAR(s.std[0], std::sqrt(0.75 * 0.25), 1e-12);  // population std of {0, 1, 1, 1}
  EXPECT_DOUBLE_EQ(s.mean[1], 0.2);
  EXPECT_NEAR(s.std[1], 0.0, 1e-12);
}

TEST(ChannelStats, AgreesWithTorchOverManyBatches) {
  // 3000 images span three 1024-image batches.
  torch::manual_seed(0);
  Dataset d;
  d.images = torch::randint(0, 256, {3000, 3, 4, 4}, torch::kUInt8);
  d.labels = torch::zeros({3000}, torch::kInt64);
  d.num_classes = 1;
  const ChannelStats s = channel_stats(d);
  auto x = d.images.to(torch::kDouble) / 255.0;
  auto mean = x.mean({0, 2, 3});
  auto std = x.std({0, 2, 3}, /*unbiased=*/false);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(s.mean[c], mean[c].item<double>(), 1e-12);
    EXPECT_NEAR(s.std[c], std[c].item<double>(), 1e-12);
  }
  EXPECT_TRUE(channel_stats(Dataset()).mean.empty());
}

}  // namespace
}  // namespace fedtail
