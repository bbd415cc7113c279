#include "common/learning/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

namespace fedtail {
namespace {

ModelOptions options_for(const std::string& arch, int channels, int size, int feature_dim = 0) {
  ModelOptions o;
  o.arch = arch;
  o.in_channels = channels;
  o.image_size = size;
  o.num_classes = 10;
  o.feature_dim = feature_dim;
  return o;
}

Model build(const ModelOptions& o, uint64_t seed = 1) {
  Rng rng(seed);
  auto model = make_model(o, rng);
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::move(model).value();
}

TEST(ModelsTest, EveryArchitectureMapsBothInputShapesToFeaturesAndLogits) {
  for (const auto& arch : model_architectures()) {
    for (auto [channels, size] : {std::pair<int, int>{1, 28}, {3, 32}}) {
      SCOPED_TRACE(arch + " " + std::to_string(channels) + "x" + std::to_string(size));
      Model model = build(options_for(arch, channels, size));
      model->eval();
      torch::NoGradGuard no_grad;
      auto x = torch::randn({2, channels, size, size});
      auto f = model->features(x);
      EXPECT_EQ(f.sizes(), (std::vector<int64_t>{2, native_feature_dim(arch)}));
      EXPECT_GE(f.min().item<float>(), 0.0f);  // post-ReLU features
      EXPECT_EQ(model->forward(x).sizes(), (std::vector<int64_t>{2, 10}));
      EXPECT_EQ(model->feature_dim(), native_feature_dim(arch));
    }
  }
}

TEST(ModelsTest, FeatureDimOtherThanNativeAddsProjection) {
  Model model = build(options_for("resnet8", 3, 32, /*feature_dim=*/48));
  EXPECT_EQ(model->feature_dim(), 48);
  EXPECT_EQ(model->backbone()->native_dim(), 64);
  auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("backbone.projection.weight"));
  EXPECT_EQ(params["backbone.projection.weight"].sizes(), (std::vector<int64_t>{48, 64}));
  EXPECT_EQ(params["heads.classifier.weight"].sizes(), (std::vector<int64_t>{10, 48}));
  auto f = model->features(torch::randn({3, 3, 32, 32}));
  EXPECT_EQ(f.sizes(), (std::vector<int64_t>{3, 48}));
  EXPECT_GE(f.min().item<float>(), 0.0f);

  Model native = build(options_for("resnet8", 3, 32, /*feature_dim=*/64));
  EXPECT_FALSE(native->named_parameters().contains("backbone.projection.weight"));
}

TEST(ModelsTest, HeadsCanBeAddedAndLookedUp) {
  Model model = build(options_for("cnn", 1, 28));
  EXPECT_TRUE(model->has_head("classifier"));
  EXPECT_FALSE(model->has_head("aux"));
  ASSERT_TRUE(model->add_head("aux", 5).ok());
  ASSERT_TRUE(model->add_head("etf", 10, /*bias=*/false).ok());
  EXPECT_EQ(model->head_names(), (std::vector<std::string>{"classifier", "aux", "etf"}));
  EXPECT_EQ(model->head("aux")->weight.sizes(), (std::vector<int64_t>{5, 128}));
  EXPECT_FALSE(model->head("etf")->bias.defined());
  auto x = torch::randn({4, 1, 28, 28});
  EXPECT_EQ(model->logits(x, "aux").sizes(), (std::vector<int64_t>{4, 5}));
  auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("heads.aux.weight"));
  EXPECT_TRUE(params.contains("heads.aux.bias"));
  EXPECT_TRUE(params.contains("heads.etf.weight"));
  EXPECT_FALSE(params.contains("heads.etf.bias"));
  // The head shares storage with the model.
  EXPECT_TRUE(model->head("aux")->weight.is_same(params["heads.aux.weight"]));

  EXPECT_EQ(model->add_head("aux", 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model->add_head("a.b", 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model->add_head("", 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model->add_head("zero", 0).code(), StatusCode::kInvalidArgument);
}

TEST(ModelsTest, ParameterNamesArePrefixedAndFollowTheLayout) {
  for (const auto& arch : model_architectures()) {
    Model model = build(options_for(arch, 3, 32));
    for (const auto& p : model->named_parameters()) {
      const bool prefixed = p.key().rfind("backbone.", 0) == 0 || p.key().rfind("heads.", 0) == 0;
      EXPECT_TRUE(prefixed) << arch << ": " << p.key();
    }
  }
  Model cnn = build(options_for("cnn", 1, 28));
  std::vector<std::string> names;
  for (const auto& p : cnn->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.bias",
                       "backbone.conv2.weight", "backbone.bn2.weight", "backbone.bn2.bias",
                       "backbone.conv3.weight", "backbone.bn3.weight", "backbone.bn3.bias",
                       "backbone.fc.weight", "backbone.fc.bias", "heads.classifier.weight",
                       "heads.classifier.bias"}));

  Model resnet = build(options_for("resnet8", 3, 32));
  auto params = resnet->named_parameters();
  for (const char* name :
       {"backbone.conv1.weight", "backbone.layer1.0.conv2.weight",
        "backbone.layer2.0.shortcut.0.weight", "backbone.layer2.0.shortcut.1.bias",
        "backbone.layer3.0.bn2.weight", "heads.classifier.weight"}) {
    EXPECT_TRUE(params.contains(name)) << name;
  }
  EXPECT_FALSE(params.contains("backbone.layer1.0.shortcut.0.weight"));  // identity shortcut
  EXPECT_TRUE(resnet->named_buffers().contains("backbone.bn1.running_mean"));
}

TEST(ModelsTest, ResNet18HasTheClassicCifarParameterCount) {
  // The CIFAR ResNet-18 of kuangliu/pytorch-cifar: 11,173,962 parameters for 3 channels, 10
  // classes.
  EXPECT_EQ(count_parameters(*build(options_for("resnet18", 3, 32))), 11173962);
  // ResNet-8 at 16/32/64: 78,042 parameters with a 10-class head.
  EXPECT_EQ(count_parameters(*build(options_for("resnet8", 3, 32))), 78042);
}

TEST(ModelsTest, InitialisationIsAFunctionOfTheRng) {
  auto o = options_for("resnet8", 3, 32);
  Model a = build(o, 7), b = build(o, 7), c = build(o, 8);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  bool any_differs = false;
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    any_differs = any_differs || !torch::equal(p.value(), pc[p.key()]);
  }
  EXPECT_TRUE(any_differs);

  // A head's initial weights depend on its name, not on the order heads are added.
  ASSERT_TRUE(a->add_head("x", 3).ok());
  ASSERT_TRUE(a->add_head("y", 3).ok());
  ASSERT_TRUE(b->add_head("y", 3).ok());
  ASSERT_TRUE(b->add_head("x", 3).ok());
  EXPECT_TRUE(torch::equal(a->head("x")->weight, b->head("x")->weight));
  EXPECT_FALSE(torch::equal(a->head("x")->weight, a->head("y")->weight));
}

TEST(ModelsTest, RejectsInvalidOptionsNamingTheField) {
  Rng rng(1);
  auto o = options_for("cnn", 1, 28);
  o.num_classes = 0;
  auto r = make_model(o, rng);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("model.num_classes"), std::string::npos);
  o = options_for("vgg", 1, 28);
  r = make_model(o, rng);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.arch"), std::string::npos);
}

TEST(ModelsTest, CloneIsADeepCopy) {
  Model model = build(options_for("cnn", 1, 16));
  ASSERT_TRUE(model->add_head("aux", 4).ok());
  model->head("aux")->weight.set_requires_grad(false);
  model->eval();
  auto copy = clone_model(model);
  ASSERT_TRUE(copy.ok()) << copy.status().to_string();
  EXPECT_FALSE((*copy)->is_training());
  EXPECT_EQ((*copy)->head_names(), model->head_names());
  EXPECT_FALSE((*copy)->head("aux")->weight.requires_grad());
  auto src = model->named_parameters();
  for (const auto& p : (*copy)->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), src[p.key()])) << p.key();
    EXPECT_FALSE(p.value().is_same(src[p.key()]));
  }
  torch::NoGradGuard no_grad;
  (*copy)->head("classifier")->weight.add_(1.0);
  EXPECT_FALSE(
      torch::equal((*copy)->head("classifier")->weight, model->head("classifier")->weight));
}

}  // namespace
}  // namespace fedtail
