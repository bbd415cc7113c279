#include "common/data/augment.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

namespace fedtail {
namespace {

torch::Tensor random_images(int64_t b, int64_t c, int64_t h, int64_t w, uint64_t seed = 3) {
  auto gen_options = torch::TensorOptions().dtype(torch::kInt64);
  torch::manual_seed(seed);  // test data only; fedtail code never uses the global generator
  return torch::randint(/*low=*/1, /*high=*/256, {b, c, h, w}, gen_options).to(torch::kUInt8);
}

Augmenter make(const AugmentOptions& o, int64_t channels) {
  auto a = Augmenter::create(o, channels, torch::kCPU);
  EXPECT_TRUE(a.ok()) << a.status().to_string();
  return std::move(a).value();
}

TEST(AugmentTest, CropAndFlipKeepTheShapeAndGiveFloat) {
  Augmenter aug = make(AugmentOptions{}, 3);
  Rng rng(1);
  auto x = random_images(5, 3, 32, 32);
  auto y = aug.train_batch(x, rng);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  auto one = make(AugmentOptions{}, 1).train_batch(random_images(2, 1, 28, 28), rng);
  EXPECT_EQ(one.sizes(), (std::vector<int64_t>{2, 1, 28, 28}));
}

TEST(AugmentTest, NoCropNoFlipGivesTheExactNormalisedCopy) {
  AugmentOptions o;
  o.crop_padding = 0;
  o.horizontal_flip = false;
  o.mean = {0.25, 0.5, 0.75};
  o.std = {0.5, 0.25, 0.125};
  Augmenter aug = make(o, 3);
  Rng rng(1);
  auto x = random_images(4, 3, 8, 8);
  auto mean = torch::tensor({0.25, 0.5, 0.75}, torch::kFloat32).view({1, 3, 1, 1});
  auto std = torch::tensor({0.5, 0.25, 0.125}, torch::kFloat32).view({1, 3, 1, 1});
  auto expected = (x.to(torch::kFloat32) / 255.0 - mean) / std;
  EXPECT_TRUE(torch::allclose(aug.train_batch(x, rng), expected, /*rtol=*/1e-5, /*atol=*/1e-5));
  EXPECT_TRUE(torch::allclose(aug.eval_batch(x), expected, 1e-5, 1e-5));

  o.normalize = false;
  EXPECT_TRUE(torch::allclose(make(o, 3).eval_batch(x), x.to(torch::kFloat32) / 255.0));
  o.normalize = true;
  o.mean.clear();
  o.std.clear();  // default 0.5/0.5 maps pixels to [-1, 1]
  auto defaults = make(o, 3).eval_batch(torch::full({1, 3, 2, 2}, 255, torch::kUInt8));
  EXPECT_TRUE(torch::allclose(defaults, torch::ones({1, 3, 2, 2})));
}

TEST(AugmentTest, FlippedSamplesEqualTheirMirrorImage) {
  AugmentOptions o;
  o.crop_padding = 0;
  o.normalize = false;
  Augmenter aug = make(o, 2);
  Rng rng(5);
  auto x = random_images(64, 2, 6, 7);
  auto y = aug.train_batch(x, rng);
  auto plain = x.to(torch::kFloat32) / 255.0;
  auto mirror = plain.flip({3});
  int flipped = 0, kept = 0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    if (torch::allclose(y[i], mirror[i])) {
      ++flipped;
    } else if (torch::allclose(y[i], plain[i])) {
      ++kept;
    }
  }
  EXPECT_EQ(flipped + kept, 64);
  EXPECT_GT(flipped, 10);
  EXPECT_GT(kept, 10);
}

TEST(AugmentTest, CropIsAWindowOfTheZeroPaddedImage) {
  AugmentOptions o;
  o.crop_padding = 2;
  o.horizontal_flip = false;
  o.normalize = false;
  Augmenter aug = make(o, 3);
  Rng rng(9);
  auto x = random_images(32, 3, 6, 6);
  auto y = (aug.train_batch(x, rng) * 255.0).round().to(torch::kUInt8);
  auto padded = torch::constant_pad_nd(x, {2, 2, 2, 2}, 0);
  int shifted = 0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    bool found = false;
    for (int64_t dy = 0; dy <= 4 && !found; ++dy) {
      for (int64_t dx = 0; dx <= 4 && !found; ++dx) {
        found = torch::equal(y[i], padded[i].slice(1, dy, dy + 6).slice(2, dx, dx + 6));
        if (found && (dy != 2 || dx != 2)) ++shifted;
      }
    }
    EXPECT_TRUE(found) << "sample " << i;
  }
  EXPECT_GT(shifted, 16);  // 24 of 25 offsets move the image
}

TEST(AugmentTest, SameRngGivesTheSameBatch) {
  Augmenter aug = make(AugmentOptions{}, 3);
  auto x = random_images(16, 3, 12, 12);
  Rng a(42), b(42), c(43);
  auto ya = aug.train_batch(x, a);
  EXPECT_TRUE(torch::equal(ya, aug.train_batch(x, b)));
  EXPECT_FALSE(torch::equal(ya, aug.train_batch(x, c)));
}

TEST(AugmentTest, RejectsMeanOfTheWrongLength) {
  AugmentOptions o;
  o.mean = {0.1, 0.2};
  o.std = {0.3, 0.4};
  auto a = Augmenter::create(o, 3, torch::kCPU);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("augment.mean"), std::string::npos);
  EXPECT_TRUE(Augmenter::create(o, 2, torch::kCPU).ok());
}

TEST(AugmentTest, ParsesOptionsAndNamesBadFields) {
  auto ok = parse_augment_options(
      nlohmann::json::parse(R"({"crop_padding": 2, "horizontal_flip": false, "mean": [0.3],
                                "std": [0.2]})"),
      "config.local.augment");
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->crop_padding, 2);
  EXPECT_FALSE(ok->horizontal_flip);
  EXPECT_TRUE(ok->normalize);
  EXPECT_EQ(ok->mean, std::vector<double>{0.3});

  auto bad = parse_augment_options(nlohmann::json::parse(R"({"crop_padding": -1})"), "c.augment");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("c.augment.crop_padding: must be >= 0"), std::string::npos);
  bad = parse_augment_options(nlohmann::json::parse(R"({"std": [0.0], "mean": [0.5]})"), "c");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("c.std"), std::string::npos);
  bad = parse_augment_options(nlohmann::json::parse(R"({"flip": true})"), "c");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("c.flip: unknown key"), std::string::npos);
}

}  // namespace
}  // namespace fedtail
