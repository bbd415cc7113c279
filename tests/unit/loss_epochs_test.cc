// run_loss_epochs: the epoch loop strategies with their own step share (FedLoGe, FedRoD, FedProto,
// FedSA): example-weighted means, the step cap, drop_last, and the errors it names.
#include "common/learning/loss_epochs.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>
#include <vector>

#include "tests/unit/strategy_test_util.h"

namespace fedtail {
namespace {

LocalTrainOptions options(int epochs, int batch_size) {
  LocalTrainOptions o;
  o.epochs = epochs;
  o.batch_size = batch_size;
  o.augment.crop_padding = 0;
  return o;
}

TEST(LossEpochsTest, MeansAreExampleWeightedOverEveryBatchOfEveryEpoch) {
  const Dataset data = strategies::testing::separable(10, 1);
  Rng rng(5);
  // Value 0: the batch size; value 1: the number of class-1 labels in the batch.
  std::vector<int64_t> sizes;
  auto means = run_loss_epochs(
      data, options(2, 4), /*drop_last=*/false, torch::kCPU, rng, {"a", "b"}, "test",
      [&](const torch::Tensor& x, const torch::Tensor& y) -> Result<torch::Tensor> {
        sizes.push_back(x.size(0));
        return torch::stack(
            {torch::tensor(static_cast<double>(x.size(0))), y.sum().to(torch::kFloat64)});
      });
  ASSERT_TRUE(means.ok()) << means.status().to_string();
  EXPECT_EQ(sizes, std::vector<int64_t>({4, 4, 2, 4, 4, 2}));
  EXPECT_EQ(means->steps, 6);
  EXPECT_EQ(means->examples, 20);
  // Σ b·b / Σ b = (16 + 16 + 4) · 2 / 20.
  EXPECT_DOUBLE_EQ(means->means[0], 72.0 / 20);
  // Σ b·(class-1 count of the batch) / 20: each epoch sees all 5 class-1 labels in some batch.
  EXPECT_GT(means->means[1], 0);
}

TEST(LossEpochsTest, TheStepCapAndDropLast) {
  const Dataset data = strategies::testing::separable(10, 1);
  Rng rng(5);
  LocalTrainOptions capped = options(5, 4);
  capped.max_steps = 3;
  int calls = 0;
  auto step = [&](const torch::Tensor& x, const torch::Tensor&) -> Result<torch::Tensor> {
    ++calls;
    return torch::ones({1}) * static_cast<double>(x.size(0));
  };
  auto a = run_loss_epochs(data, capped, false, torch::kCPU, rng, {"a"}, "test", step);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->steps, 3);
  EXPECT_EQ(calls, 3);
  auto b = run_loss_epochs(data, options(1, 4), /*drop_last=*/true, torch::kCPU, rng, {"a"}, "test",
                           step);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->steps, 2);  // the batch of 2 is dropped
  EXPECT_EQ(b->examples, 8);
}

TEST(LossEpochsTest, ErrorsNameTheLossTheEpochAndTheCaller) {
  const Dataset data = strategies::testing::separable(8, 1);
  Rng rng(5);
  auto nan =
      run_loss_epochs(data, options(2, 4), false, torch::kCPU, rng, {"of ψ", "of φ"}, "my training",
                      [](const torch::Tensor&, const torch::Tensor&) -> Result<torch::Tensor> {
                        return torch::tensor({1.0, std::numeric_limits<double>::quiet_NaN()});
                      });
  EXPECT_EQ(nan.status().code(), StatusCode::kInternal);
  EXPECT_EQ(nan.status().message(),
            "my training: the loss of φ is not finite in epoch 1 (try a lower local.lr)");

  auto wrong =
      run_loss_epochs(data, options(1, 4), false, torch::kCPU, rng, {"a", "b"}, "my training",
                      [](const torch::Tensor&, const torch::Tensor&) -> Result<torch::Tensor> {
                        return torch::ones({3});
                      });
  EXPECT_EQ(wrong.status().code(), StatusCode::kInternal);
  EXPECT_NE(wrong.status().message().find("returned 3 values, expected 2"), std::string::npos)
      << wrong.status().message();

  auto refused =
      run_loss_epochs(data, options(1, 4), false, torch::kCPU, rng, {"a"}, "my training",
                      [](const torch::Tensor&, const torch::Tensor&) -> Result<torch::Tensor> {
                        return Status::InvalidArgument("no");
                      });
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("my training"), std::string::npos);

  auto throws =
      run_loss_epochs(data, options(1, 4), false, torch::kCPU, rng, {"a"}, "my training",
                      [](const torch::Tensor& x, const torch::Tensor&) -> Result<torch::Tensor> {
                        return x.matmul(torch::ones({3, 3}));  // wrong shapes: LibTorch throws
                      });
  EXPECT_EQ(throws.status().code(), StatusCode::kInternal);

  Dataset empty;
  auto none =
      run_loss_epochs(empty, options(1, 4), false, torch::kCPU, rng, {"a"}, "my training",
                      [](const torch::Tensor&, const torch::Tensor&) -> Result<torch::Tensor> {
                        return torch::ones({1});
                      });
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fedtail
