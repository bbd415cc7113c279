// config.model.groups: heterogeneous federations. Parsing, the per-client architecture, the common
// feature width, and the refusal by strategies that train one global model.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "common/learning/model_options.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail {
namespace {

using nlohmann::json;

TEST(ModelGroupsTest, ParsesAndValidatesTheArchitectures) {
  auto o = parse_model_options(
      json::parse(R"({"feature_dim": 64, "groups": ["cnn", "resnet8", "resnet18"]})"),
      "config.model");
  ASSERT_TRUE(o.ok()) << o.status().to_string();
  EXPECT_EQ(o->groups, (std::vector<std::string>{"cnn", "resnet8", "resnet18"}));
  auto bad = parse_model_options(json::parse(R"({"groups": ["cnn", "vgg"]})"), "config.model");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      bad.status().message(),
      "config.model.groups[1]: must be one of cnn, resnet8, resnet18, resnet34 (got \"vgg\")");
  auto not_a_list = parse_model_options(json::parse(R"({"groups": 3})"), "config.model");
  EXPECT_NE(not_a_list.status().message().find("config.model.groups"), std::string::npos)
      << not_a_list.status().to_string();
  ModelOptions direct;
  direct.groups = {"cnn", "mlp"};
  direct.in_channels = direct.image_size = direct.num_classes = 1;
  EXPECT_NE(validate_model_options(direct).message().find("model.groups[1]"), std::string::npos);
}

TEST(ModelGroupsTest, ClientKUsesGroupKModuloTheSize) {
  ModelOptions o;
  o.arch = "resnet34";
  o.groups = {"cnn", "resnet8", "resnet18"};
  const std::vector<std::string> expected = {"cnn", "resnet8", "resnet18", "cnn", "resnet8"};
  for (int k = 0; k < 5; ++k) {
    ModelOptions c = client_model_options(o, k);
    EXPECT_EQ(c.arch, expected[static_cast<size_t>(k)]) << k;
    EXPECT_TRUE(c.groups.empty());
  }
  EXPECT_EQ(client_architectures(o), (std::vector<std::string>{"cnn", "resnet8", "resnet18"}));
  o.groups.clear();
  EXPECT_EQ(client_model_options(o, 7).arch, "resnet34");
  EXPECT_EQ(client_architectures(o), (std::vector<std::string>{"resnet34"}));
}

TEST(ModelGroupsTest, TheCommonFeatureWidth) {
  ModelOptions o;
  o.groups = {"cnn", "resnet8"};
  auto mixed = common_feature_dim(o);
  EXPECT_EQ(mixed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mixed.status().message().find("model.feature_dim"), std::string::npos);
  EXPECT_NE(mixed.status().message().find("cnn 128, resnet8 64"), std::string::npos)
      << mixed.status().message();
  o.feature_dim = 32;
  EXPECT_EQ(*common_feature_dim(o), 32);
  o.feature_dim = 0;
  o.groups = {"resnet18", "resnet34", "resnet18"};
  EXPECT_EQ(*common_feature_dim(o), 512);
  o.groups.clear();
  o.arch = "resnet8";
  EXPECT_EQ(*common_feature_dim(o), 64);
}

TEST(ModelGroupsTest, StrategiesWithOneGlobalModelRefuseGroups) {
  strategies::register_builtin_strategies();
  RunConfig config = strategies::testing::tiny_config();
  config.model.groups = {"cnn", "resnet8"};
  strategies::RunContext run = strategies::testing::run_context(config);
  for (const char* name : {"fedavg", "fedprox", "fedloge"}) {
    auto server = strategies::make_server_strategy(name, {});
    ASSERT_TRUE(server.ok()) << name;
    Rng rng(1);
    Status s = (*server)->initialize(run, rng);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(s.message().find("config.model.groups"), std::string::npos)
        << name << ": " << s.message();
  }
  for (const char* name : {"fedsa", "fedproto"}) {
    auto server = strategies::make_server_strategy(name, {});
    ASSERT_TRUE(server.ok()) << name;
    Rng rng(1);
    EXPECT_TRUE((*server)->initialize(run, rng).ok()) << name;  // feature_dim 16 for both
  }
}

}  // namespace
}  // namespace fedtail
