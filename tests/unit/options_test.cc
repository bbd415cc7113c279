// Option parsing of the model, local training and evaluation sections, and device specs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common/data/dataset.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "common/learning/train_options.h"

namespace fedtail {
namespace {

using nlohmann::json;

template <typename T>
std::string error_of(const Result<T>& r) {
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : r.status().message();
}

TEST(OptionsTest, ModelOptionsParseAndDefault) {
  auto o = parse_model_options(json::parse(R"({"arch": "resnet18", "feature_dim": 256})"),
                               "config.model");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->arch, "resnet18");
  EXPECT_EQ(o->feature_dim, 256);
  EXPECT_EQ(o->in_channels, 0);
  auto d = parse_model_options(json(nullptr), "config.model");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->arch, "cnn");
}

TEST(OptionsTest, ModelOptionsErrorsNameTheField) {
  EXPECT_EQ(error_of(parse_model_options(json::parse(R"({"arch": "vgg"})"), "config.model")),
            "config.model.arch: must be one of cnn, resnet8, resnet18, resnet34, torchscript (got "
            "\"vgg\")");
  EXPECT_EQ(error_of(parse_model_options(json::parse(R"({"depth": 3})"), "config.model")),
            "config.model.depth: unknown key");
  EXPECT_NE(error_of(parse_model_options(json::parse(R"({"feature_dim": -1})"), "config.model"))
                .find("config.model.feature_dim: must be >= 0"),
            std::string::npos);
  EXPECT_NE(error_of(parse_model_options(json::parse(R"({"num_classes": "ten"})"), "m"))
                .find("m.num_classes: expected an integer"),
            std::string::npos);
}

TEST(OptionsTest, ModelOptionsFillFromData) {
  Dataset d;
  d.images = torch::zeros({2, 3, 32, 32}, torch::kUInt8);
  d.labels = torch::zeros({2}, torch::kInt64);
  d.num_classes = 100;
  ModelOptions o;
  ASSERT_TRUE(fill_model_options_from_data(d, &o).ok());
  EXPECT_EQ(o.in_channels, 3);
  EXPECT_EQ(o.image_size, 32);
  EXPECT_EQ(o.num_classes, 100);
  EXPECT_TRUE(validate_model_options(o).ok());
  ModelOptions conflicting;
  conflicting.in_channels = 1;
  Status s = fill_model_options_from_data(d, &conflicting);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.in_channels"), std::string::npos);
  EXPECT_NE(validate_model_options(ModelOptions{}).message().find("model.in_channels"),
            std::string::npos);
}

TEST(OptionsTest, LocalTrainOptionsParse) {
  auto o = parse_local_train_options(
      json::parse(R"({"epochs": 2, "batch_size": 64, "lr": 0.1, "momentum": 0.0,
                      "weight_decay": 0, "max_steps": 10, "augment": {"crop_padding": 0}})"),
      "config.local");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->epochs, 2);
  EXPECT_EQ(o->batch_size, 64);
  EXPECT_DOUBLE_EQ(o->lr, 0.1);
  EXPECT_DOUBLE_EQ(o->momentum, 0.0);
  EXPECT_EQ(o->max_steps, 10);
  EXPECT_EQ(o->augment.crop_padding, 0);
  EXPECT_TRUE(o->augment.horizontal_flip);
  auto d = parse_local_train_options(json::object(), "config.local");
  ASSERT_TRUE(d.ok());
  EXPECT_DOUBLE_EQ(d->lr, 0.01);
  EXPECT_EQ(d->augment.crop_padding, 4);
}

TEST(OptionsTest, LocalTrainOptionsRejectAbsurdValuesNamingTheField) {
  auto err = [](const char* text) {
    return error_of(parse_local_train_options(json::parse(text), "config.local"));
  };
  EXPECT_EQ(err(R"({"lr": "0.1"})"), "config.local.lr: expected a number (got \"0.1\")");
  EXPECT_EQ(err(R"({"lr": 0})").rfind("config.local.lr: must be > 0", 0), 0u);
  EXPECT_EQ(err(R"({"lr": -1})").rfind("config.local.lr: must be > 0", 0), 0u);
  EXPECT_EQ(err(R"({"epochs": 0})").rfind("config.local.epochs: must be >= 1", 0), 0u);
  EXPECT_EQ(err(R"({"batch_size": 0})").rfind("config.local.batch_size: must be >= 1", 0), 0u);
  EXPECT_EQ(err(R"({"momentum": 1.0})").rfind("config.local.momentum: must be in [0, 1)", 0), 0u);
  EXPECT_EQ(err(R"({"momentum": -0.1})").rfind("config.local.momentum", 0), 0u);
  EXPECT_EQ(err(R"({"weight_decay": -1e-4})").rfind("config.local.weight_decay: must be >= 0", 0),
            0u);
  EXPECT_EQ(err(R"({"max_steps": -1})").rfind("config.local.max_steps", 0), 0u);
  EXPECT_EQ(err(R"({"augment": {"crop_padding": -2}})")
                .rfind("config.local.augment.crop_padding: must be >= 0", 0),
            0u);
  EXPECT_EQ(err(R"({"augment": 3})"), "config.local.augment: expected an object (got number)");
  EXPECT_EQ(err(R"({"learning_rate": 0.1})"), "config.local.learning_rate: unknown key");
}

TEST(OptionsTest, EvalOptionsParseAndReject) {
  auto o = parse_eval_options(json::parse(R"({"batch_size": 128, "mask_absent_classes": true,
                                              "every": 5})"),
                              "config.eval");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->batch_size, 128);
  EXPECT_TRUE(o->mask_absent_classes);
  EXPECT_EQ(o->every, 5);
  EXPECT_EQ(parse_eval_options(json::object(), "config.eval")->batch_size, 512);
  EXPECT_EQ(error_of(parse_eval_options(json::parse(R"({"every": 0})"), "config.eval"))
                .rfind("config.eval.every: must be >= 1", 0),
            0u);
  EXPECT_EQ(
      error_of(parse_eval_options(json::parse(R"({"mask_absent_classes": 1})"), "config.eval")),
      "config.eval.mask_absent_classes: expected true or false (got 1)");
}

TEST(OptionsTest, ParseDevice) {
  auto cpu = parse_device("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->is_cpu());
  auto automatic = parse_device("auto");
  ASSERT_TRUE(automatic.ok());
  EXPECT_EQ(automatic->is_cuda(), torch::cuda::is_available());
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda0", "CPU", ""}) {
    auto r = parse_device(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message().rfind("device: ", 0), 0u) << r.status().message();
  }
  auto far = parse_device("cuda:99");
  ASSERT_FALSE(far.ok());
  if (!torch::cuda::is_available()) {
    EXPECT_NE(far.status().message().find("no CUDA device"), std::string::npos);
    EXPECT_FALSE(parse_device("cuda").ok());
  } else {
    EXPECT_NE(far.status().message().find("out of range"), std::string::npos);
    EXPECT_TRUE(parse_device("cuda:0").ok());
  }
}

TEST(OptionsTest, SetNumThreads) {
  set_num_threads(1);
  EXPECT_EQ(torch::get_num_threads(), 1);
  set_num_threads(0);
  EXPECT_EQ(torch::get_num_threads(), hardware_threads());
}

}  // namespace
}  // namespace fedtail
