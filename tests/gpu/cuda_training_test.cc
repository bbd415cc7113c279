// GPU tests: a CUDA training step and batched evaluation on the device. They skip themselves on a
// machine without CUDA, so the whole suite runs everywhere; on a CUDA host run `ctest -L gpu`.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/base/rng.h"
#include "common/data/dataset.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/train_loop.h"
#include "common/learning/train_options.h"

namespace fedtail {
namespace {

Dataset synthetic_cifar_like(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  Dataset d;
  d.num_classes = 10;
  d.labels = torch::randint(0, 10, {n}, torch::kInt64);
  // Class-dependent brightness makes the task learnable in a few steps.
  auto base = (d.labels.to(torch::kFloat32) * 20 + 30).view({n, 1, 1, 1});
  d.images =
      (base + torch::randn({n, 3, 32, 32}) * 10).clamp(0, 255).to(torch::kUInt8).contiguous();
  for (int c = 0; c < 10; ++c) d.class_names.push_back("c" + std::to_string(c));
  return d;
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaTest, AutoDeviceSelectsCuda) {
  auto device = parse_device("auto");
  ASSERT_TRUE(device.ok()) << device.status().to_string();
  EXPECT_TRUE(device->is_cuda());
}

TEST_F(CudaTest, TrainStepOnCudaLowersLossAndKeepsWeightsOnDevice) {
  Dataset data = synthetic_cifar_like(512, 1);
  ModelOptions options;
  options.arch = "resnet8";
  ASSERT_TRUE(fill_model_options_from_data(data, &options).ok());
  Rng rng(7);
  auto model = make_model(options, rng);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  torch::Device device = parse_device("cuda").value();
  LocalTrainOptions train;
  train.epochs = 3;
  train.batch_size = 32;
  train.lr = 0.05;
  Rng train_rng(3);
  auto stats = train_local(*model, data, train, device, train_rng);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  ASSERT_EQ(stats->epoch_loss.size(), 3u);
  EXPECT_LT(stats->epoch_loss.back(), stats->epoch_loss.front());
  for (const auto& p : (*model)->parameters()) EXPECT_TRUE(p.device().is_cuda());

  // Evaluation runs batched on the device; predictions come back on the CPU.
  auto predictions = predict(*model, data, train.augment, device, /*batch_size=*/128);
  ASSERT_TRUE(predictions.ok()) << predictions.status().to_string();
  EXPECT_EQ(predictions->size(0), data.size());
  EXPECT_TRUE(predictions->device().is_cpu());

  // The wire format copies device tensors to the host.
  auto state = module_state(**model);
  ASSERT_TRUE(state.ok());
  EXPECT_GT(state->payload_bytes(), 0u);
}

}  // namespace
}  // namespace fedtail
