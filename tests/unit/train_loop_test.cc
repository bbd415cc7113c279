#include "common/learning/train_loop.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

namespace fedtail {
namespace {

// Two classes of 1×8×8 images: class 0 is bright in the top half, class 1 in the bottom half, with
// noise. Separable, and unchanged in meaning by a horizontal flip.
Dataset separable(int64_t n, uint64_t seed = 1) {
  Rng rng(seed);
  std::vector<uint8_t> pixels(n * 64);
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = i % 2;
    for (int r = 0; r < 8; ++r) {
      for (int c = 0; c < 8; ++c) {
        const bool bright = (r < 4) == (labels[i] == 0);
        pixels[i * 64 + r * 8 + c] =
            static_cast<uint8_t>((bright ? 150 : 20) + rng.uniform_int(80));
      }
    }
  }
  Dataset d;
  d.images = torch::tensor(pixels, torch::kUInt8).view({n, 1, 8, 8});
  d.labels = torch::tensor(labels, torch::kInt64);
  d.num_classes = 2;
  d.class_names = {"top", "bottom"};
  return d;
}

Model tiny_model(int channels = 1, int classes = 2) {
  ModelOptions o;
  o.arch = "cnn";
  o.in_channels = channels;
  o.image_size = 8;
  o.num_classes = classes;
  o.feature_dim = 16;
  Rng rng(11);
  auto m = make_model(o, rng);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  return std::move(m).value();
}

LocalTrainOptions quick_options() {
  LocalTrainOptions o;
  o.epochs = 4;
  o.batch_size = 16;
  o.lr = 0.05;
  o.augment.crop_padding = 1;
  return o;
}

TEST(TrainLoopTest, LossDecreasesAndTheModelLearnsASeparableSet) {
  Dataset data = separable(96);
  Model model = tiny_model();
  Rng rng(3);
  auto stats = train_local(model, data, quick_options(), torch::kCPU, rng);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  ASSERT_EQ(stats->epoch_loss.size(), 4u);
  EXPECT_LT(stats->epoch_loss.back(), stats->epoch_loss.front());
  EXPECT_LT(stats->epoch_loss.back(), 0.3);

  auto report = evaluate_accuracy(model, separable(64, /*seed=*/2), groups_by_threshold({32, 32}),
                                  quick_options().augment, torch::kCPU, /*batch_size=*/10);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(report->examples, 64);
  EXPECT_EQ(report->per_class_examples, (std::vector<int64_t>{32, 32}));
  EXPECT_GT(report->overall, 0.9);
  EXPECT_DOUBLE_EQ(report->medium, (report->per_class[0] + report->per_class[1]) / 2);

  auto predictions = predict(model, separable(64, /*seed=*/2), quick_options().augment, torch::kCPU,
                             /*batch_size=*/10);
  ASSERT_TRUE(predictions.ok()) << predictions.status().to_string();
  const double accuracy =
      predictions->eq(separable(64, 2).labels).to(torch::kFloat64).mean().item<double>();
  EXPECT_GT(accuracy, 0.9);
}

TEST(TrainLoopTest, TrainLocalReportsExamplesStepsAndTime) {
  Dataset data = separable(40);
  Model model = tiny_model();
  Rng rng(3);
  LocalTrainOptions o = quick_options();
  o.epochs = 2;
  auto stats = train_local(model, data, o, torch::kCPU, rng);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(stats->examples, 80);
  EXPECT_EQ(stats->steps, 6);  // 16 + 16 + 8 per epoch
  EXPECT_GT(stats->seconds, 0.0);
  EXPECT_GT(stats->mean_loss, 0.0);
  EXPECT_NEAR(stats->mean_loss, (stats->epoch_loss[0] + stats->epoch_loss[1]) / 2, 1e-9);
  EXPECT_TRUE(model->is_training());

  o.max_steps = 4;  // caps across epochs
  auto capped = train_local(model, data, o, torch::kCPU, rng);
  ASSERT_TRUE(capped.ok());
  EXPECT_EQ(capped->steps, 4);
  EXPECT_EQ(capped->examples, 40 + 16);
}

TEST(TrainLoopTest, SameSeedGivesTheSameModel) {
  Dataset data = separable(32);
  Model a = tiny_model(), b = tiny_model();
  Rng ra(5), rb(5);
  ASSERT_TRUE(train_local(a, data, quick_options(), torch::kCPU, ra).ok());
  ASSERT_TRUE(train_local(b, data, quick_options(), torch::kCPU, rb).ok());
  auto pb = b->named_parameters();
  for (const auto& p : a->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  }
}

TEST(TrainLoopTest, CustomLossIsUsedAndFrozenParametersStayFixed) {
  Dataset data = separable(32);
  Model model = tiny_model();
  auto frozen = model->backbone()->named_parameters()["conv1.weight"];
  frozen.set_requires_grad(false);
  auto before = frozen.clone();
  int calls = 0;
  Rng rng(2);
  auto stats = train_local(model, data, quick_options(), torch::kCPU, rng,
                           [&](const torch::Tensor& x, const torch::Tensor& y) {
                             ++calls;
                             return torch::nn::functional::cross_entropy(model->forward(x), y) +
                                    0.0 * model->features(x).sum();
                           });
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(calls, stats->steps);
  EXPECT_TRUE(torch::equal(frozen, before));
}

TEST(TrainLoopTest, EmptyDatasetIsAFailedPrecondition) {
  Dataset empty = separable(4).subset({});
  Model model = tiny_model();
  Rng rng(1);
  auto stats = train_local(model, empty, quick_options(), torch::kCPU, rng);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFailedPrecondition);
}

TEST(TrainLoopTest, LibTorchErrorsBecomeInternalStatus) {
  Dataset data = separable(8);
  Model three_channels = tiny_model(/*channels=*/3);
  Rng rng(1);
  auto stats = train_local(three_channels, data, quick_options(), torch::kCPU, rng);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kInternal);
  EXPECT_NE(stats.status().message().find("train_local"), std::string::npos);
}

TEST(TrainLoopTest, ForEachBatchVisitsEverySampleOnce) {
  // Labels 0..n-1 identify the samples.
  const int64_t n = 23;
  Dataset data = separable(n);
  data.labels = torch::arange(n, torch::kInt64);
  data.num_classes = static_cast<int>(n);
  auto augmenter = Augmenter::create(AugmentOptions{}, 1, torch::kCPU);
  ASSERT_TRUE(augmenter.ok());
  for (bool shuffle : {false, true}) {
    BatchOptions o;
    o.batch_size = 5;
    o.shuffle = shuffle;
    o.augment = shuffle;
    std::vector<int64_t> seen, sizes;
    Rng rng(4);
    Status s = for_each_batch(data, o, *augmenter, &rng,
                              [&](const torch::Tensor& x, const torch::Tensor& y) -> Status {
                                EXPECT_EQ(x.scalar_type(), torch::kFloat32);
                                EXPECT_EQ(x.size(0), y.size(0));
                                sizes.push_back(y.size(0));
                                for (int64_t i = 0; i < y.size(0); ++i) {
                                  seen.push_back(y[i].item<int64_t>());
                                }
                                return Status::OK();
                              });
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(sizes, (std::vector<int64_t>{5, 5, 5, 5, 3}));
    EXPECT_EQ(std::is_sorted(seen.begin(), seen.end()), !shuffle);
    std::sort(seen.begin(), seen.end());
    std::vector<int64_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = i;
    EXPECT_EQ(seen, all);
  }
}

TEST(TrainLoopTest, ForEachBatchStopsOnErrorAndHonoursLimits) {
  Dataset data = separable(20);
  auto augmenter = Augmenter::create(AugmentOptions{}, 1, torch::kCPU);
  ASSERT_TRUE(augmenter.ok());
  BatchOptions o;
  o.batch_size = 6;
  o.drop_last = true;
  int calls = 0;
  auto count = [&](const torch::Tensor&, const torch::Tensor&) -> Status {
    ++calls;
    return Status::OK();
  };
  ASSERT_TRUE(for_each_batch(data, o, *augmenter, nullptr, count).ok());
  EXPECT_EQ(calls, 3);  // 6 + 6 + 6, the last 2 dropped
  calls = 0;
  o.max_batches = 2;
  ASSERT_TRUE(for_each_batch(data, o, *augmenter, nullptr, count).ok());
  EXPECT_EQ(calls, 2);
  calls = 0;
  Status s = for_each_batch(data, o, *augmenter, nullptr,
                            [&](const torch::Tensor&, const torch::Tensor&) -> Status {
                              ++calls;
                              return Status::Unavailable("stop here");
                            });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1);
  o.shuffle = true;
  EXPECT_EQ(for_each_batch(data, o, *augmenter, nullptr, count).code(),
            StatusCode::kInvalidArgument);
}

TEST(TrainLoopTest, PredictCoversEverySampleInBatchesAndRestoresTheMode) {
  Dataset data = separable(37);
  Model model = tiny_model();
  ASSERT_TRUE(model->add_head("aux", 5).ok());
  model->train();
  AugmentOptions input;
  auto p = predict(model, data, input, torch::kCPU, /*batch_size=*/8);
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->sizes(), (std::vector<int64_t>{37}));
  EXPECT_EQ(p->scalar_type(), torch::kInt64);
  EXPECT_TRUE(model->is_training());

  // The batched logits equal one full-batch forward pass in eval mode.
  auto logits = predict_logits(
      model, data, [&](const torch::Tensor& f) { return model->head("aux")->forward(f); }, input,
      torch::kCPU, 8);
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(logits->sizes(), (std::vector<int64_t>{37, 5}));
  {
    torch::NoGradGuard no_grad;
    model->eval();
    auto augmenter = Augmenter::create(input, 1, torch::kCPU);
    auto full = model->logits(augmenter->eval_batch(data.images), "aux");
    EXPECT_TRUE(torch::allclose(*logits, full, 1e-4, 1e-5));
    auto aux = predict(model, data, input, torch::kCPU, 8, "aux");
    ASSERT_TRUE(aux.ok());
    EXPECT_TRUE(torch::equal(*aux, full.argmax(1)));
  }

  auto features = extract_features(model, data, input, torch::kCPU, 16);
  ASSERT_TRUE(features.ok());
  EXPECT_EQ(features->sizes(), (std::vector<int64_t>{37, 16}));

  EXPECT_EQ(predict(model, data, input, torch::kCPU, 8, "missing").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(predict(model, data, input, torch::kCPU, 0).status().code(),
            StatusCode::kInvalidArgument);
  auto none = predict(model, data.subset({}), input, torch::kCPU, 8);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->numel(), 0);
}

}  // namespace
}  // namespace fedtail
