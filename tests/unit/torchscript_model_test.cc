#include "common/learning/torchscript_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/learning/torch_bundle.h"
#include "tests/support/torchscript_modules.h"

namespace fedtail {
namespace {

using test_support::ScriptedNetSpec;

class TorchScriptModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("torchscript_model_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Saves a module built from `spec` and returns its path.
  std::string save(const ScriptedNetSpec& spec, const std::string& name) {
    const std::string path = (dir_ / name).string();
    test_support::save_scripted_net(spec, path);
    return path;
  }

  static ModelOptions options_for(const std::string& path) {
    ModelOptions o;
    o.arch = kTorchScriptArch;
    o.path = path;
    o.in_channels = 1;
    o.image_size = 12;
    o.num_classes = 10;
    return o;
  }

  static Model build(const ModelOptions& o) {
    Rng rng(7);
    Result<Model> model = make_model(o, rng);
    EXPECT_TRUE(model.ok()) << model.status().to_string();
    return std::move(model).value();
  }

  static Status build_error(const ModelOptions& o) {
    Rng rng(7);
    Result<Model> model = make_model(o, rng);
    EXPECT_FALSE(model.ok());
    return model.ok() ? Status::OK() : model.status();
  }

  std::filesystem::path dir_;
};

TEST_F(TorchScriptModelTest, ModuleBecomesBackboneAndClassifierWithTheFilesWeights) {
  const std::string path = save({}, "net.pt");
  Model model = build(options_for(path));
  EXPECT_EQ(model->feature_dim(), 16);
  auto params = model->named_parameters();
  for (const char* name :
       {"backbone.body.conv_w", "backbone.body.conv_b", "backbone.body.bn_w", "backbone.body.bn_b",
        "backbone.fc_w", "backbone.fc_b", "heads.classifier.weight", "heads.classifier.bias"}) {
    EXPECT_TRUE(params.contains(name)) << name;
  }
  EXPECT_EQ(params.size(), 8u);  // the module's head is not in the backbone
  auto buffers = model->named_buffers();
  EXPECT_TRUE(buffers.contains("backbone.body.bn_mean"));
  EXPECT_TRUE(buffers.contains("backbone.body.bn_var"));

  // Same values as the file, and the same function: head(features(x)) computed by the module.
  torch::jit::Module reference = torch::jit::load(path);
  reference.eval();
  model->eval();
  torch::Tensor head_w;
  torch::Tensor head_b;
  for (const auto& p : reference.named_parameters(/*recurse=*/true)) {
    if (p.name == "head.weight") head_w = p.value;
    if (p.name == "head.bias") head_b = p.value;
    if (p.name == "fc_w") {
      EXPECT_TRUE(torch::equal(p.value, params["backbone.fc_w"]));
    }
  }
  EXPECT_TRUE(torch::equal(head_w, params["heads.classifier.weight"]));
  torch::NoGradGuard no_grad;
  auto x = torch::randn({3, 1, 12, 12});
  auto want_features = reference.get_method("features")({x}).toTensor();
  EXPECT_TRUE(torch::allclose(model->features(x), want_features));
  EXPECT_TRUE(
      torch::allclose(model->forward(x), torch::matmul(want_features, head_w.t()) + head_b));
  EXPECT_EQ(model->forward(x).sizes(), (std::vector<int64_t>{3, 10}));
}

TEST_F(TorchScriptModelTest, TrainingStepsChangeTheSharedTensorsAndBatchNormFollowsTrainEval) {
  Model model = build(options_for(save({}, "net.pt")));
  auto mean = model->named_buffers()["backbone.body.bn_mean"];
  const auto conv_before = model->named_parameters()["backbone.body.conv_w"].clone();

  model->train();
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  auto x = torch::randn({4, 1, 12, 12}) + 1.0;
  auto loss = torch::nn::functional::cross_entropy(model->forward(x),
                                                   torch::tensor({0, 1, 2, 3}, torch::kLong));
  sgd.zero_grad();
  loss.backward();
  sgd.step();
  EXPECT_FALSE(torch::equal(conv_before, model->named_parameters()["backbone.body.conv_w"]));
  // Training mode reached the module: the forward pass updated the running mean in place.
  EXPECT_GT(mean.abs().sum().item<double>(), 0.0);

  model->eval();
  const auto mean_after_train = mean.clone();
  torch::NoGradGuard no_grad;
  model->forward(x);
  EXPECT_TRUE(torch::equal(mean_after_train, mean));  // eval: running stats untouched
}

TEST_F(TorchScriptModelTest, CloneAndStateBundleRoundTrip) {
  const std::string path = save({}, "net.pt");
  Model model = build(options_for(path));
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["backbone.fc_b"].fill_(0.25);
  }
  Result<Model> copy = clone_model(model);
  ASSERT_TRUE(copy.ok()) << copy.status().to_string();
  EXPECT_TRUE(torch::equal((*copy)->named_parameters()["backbone.fc_b"], torch::full({16}, 0.25)));
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["backbone.fc_b"].fill_(-1);
  }
  EXPECT_TRUE(torch::equal((*copy)->named_parameters()["backbone.fc_b"],
                           torch::full({16}, 0.25)));  // a deep copy

  Result<TensorBundle> state = module_state(*model);
  ASSERT_TRUE(state.ok());
  Model other = build(options_for(path));
  ASSERT_TRUE(load_module_state(*other, *state, /*strict=*/true).ok());
  EXPECT_TRUE(torch::equal(other->named_parameters()["backbone.fc_b"], torch::full({16}, -1.0)));
}

TEST_F(TorchScriptModelTest, FeatureDimAddsAProjectionAndKeepsFedtailsHead) {
  ModelOptions o = options_for(save({}, "net.pt"));
  o.feature_dim = 12;
  Model model = build(o);
  EXPECT_EQ(model->feature_dim(), 12);
  EXPECT_EQ(model->backbone()->native_dim(), 16);
  EXPECT_EQ(model->named_parameters()["backbone.projection.weight"].sizes(),
            (std::vector<int64_t>{12, 16}));
  EXPECT_EQ(model->named_parameters()["heads.classifier.weight"].sizes(),
            (std::vector<int64_t>{10, 12}));
  Result<int> dim = common_feature_dim(o);
  ASSERT_TRUE(dim.ok());
  EXPECT_EQ(*dim, 12);
  o.feature_dim = 0;
  dim = common_feature_dim(o);
  ASSERT_TRUE(dim.ok()) << dim.status().to_string();
  EXPECT_EQ(*dim, 16);
}

TEST_F(TorchScriptModelTest, HeadWithoutBiasGivesAZeroBias) {
  ScriptedNetSpec spec;
  spec.head_bias = false;
  Model model = build(options_for(save(spec, "nobias.pt")));
  EXPECT_TRUE(torch::equal(model->named_parameters()["heads.classifier.bias"], torch::zeros({10})));
}

TEST_F(TorchScriptModelTest, ModulesOffTheConventionAreRefusedNamingWhatIsMissing) {
  Status missing = build_error(options_for((dir_ / "absent.pt").string()));
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("absent.pt: no such file"), std::string::npos)
      << missing.to_string();

  const std::string junk = (dir_ / "junk.pt").string();
  { std::ofstream(junk) << "not a zip archive"; }
  Status not_script = build_error(options_for(junk));
  EXPECT_NE(not_script.message().find("not a TorchScript module"), std::string::npos)
      << not_script.to_string();

  ScriptedNetSpec no_head;
  no_head.with_head = false;
  Status head = build_error(options_for(save(no_head, "nohead.pt")));
  EXPECT_EQ(head.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(head.message().find("nohead.pt: the module has no submodule `head`"), std::string::npos)
      << head.to_string();
  EXPECT_NE(head.message().find("features(x)"), std::string::npos)
      << head.to_string();  // the convention

  ScriptedNetSpec no_features;
  no_features.with_features = false;
  Status features = build_error(options_for(save(no_features, "nofeatures.pt")));
  EXPECT_NE(features.message().find("the module has no method features(x)"), std::string::npos)
      << features.to_string();

  ScriptedNetSpec seven;
  seven.num_classes = 7;
  Status classes = build_error(options_for(save(seven, "seven.pt")));
  EXPECT_NE(classes.message().find("head.weight has 7 rows (classes), the run has 10 classes"),
            std::string::npos)
      << classes.to_string();

  ScriptedNetSpec four_d;
  four_d.features_4d = true;
  Status shape = build_error(options_for(save(four_d, "fourd.pt")));
  EXPECT_NE(shape.message().find("has shape [2,16,1,1]; it must be [2,16]"), std::string::npos)
      << shape.to_string();

  ScriptedNetSpec rgb;
  rgb.in_channels = 3;  // the data has 1 channel: the probe's convolution fails
  Status channels = build_error(options_for(save(rgb, "rgb.pt")));
  EXPECT_NE(channels.message().find("features(x) failed on a 2×1×12×12 input"), std::string::npos)
      << channels.to_string();
}

TEST_F(TorchScriptModelTest, ConfigKeysAreCheckedPerArchitecture) {
  auto parse = [](const char* text) {
    return parse_model_options(nlohmann::json::parse(text), "config.model");
  };
  Result<ModelOptions> ok = parse(
      R"({"arch": "torchscript", "path": "m.pt", "layout": [["backbone.w", "float32", [2, 3]]]})");
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->path, "m.pt");
  ASSERT_EQ(ok->layout.size(), 1u);
  EXPECT_EQ(ok->layout[0].shape, (std::vector<int64_t>{2, 3}));

  Result<ModelOptions> no_path = parse(R"({"arch": "torchscript"})");
  ASSERT_FALSE(no_path.ok());
  EXPECT_NE(no_path.status().message().find("config.model.path: required"), std::string::npos);
  Result<ModelOptions> cnn_path = parse(R"({"arch": "cnn", "path": "m.pt"})");
  ASSERT_FALSE(cnn_path.ok());
  EXPECT_NE(cnn_path.status().message().find("config.model.path: only for arch"),
            std::string::npos);
  Result<ModelOptions> groups = parse(R"({"groups": ["cnn", "torchscript"]})");
  ASSERT_FALSE(groups.ok());
  EXPECT_NE(groups.status().message().find("cannot be part of heterogeneous groups"),
            std::string::npos);
  Result<ModelOptions> bad_sha = parse(R"({"arch": "torchscript", "path": "m", "sha256": "ab"})");
  EXPECT_FALSE(bad_sha.ok());
  Result<ModelOptions> bad_layout = parse(R"({"arch": "torchscript", "path": "m", "layout": [1]})");
  ASSERT_FALSE(bad_layout.ok());
  EXPECT_NE(bad_layout.status().message().find("config.model.layout[0]"), std::string::npos);
}

TEST_F(TorchScriptModelTest, PinsNameTheFirstDifferenceThenTheDigest) {
  const std::string path = save({}, "net.pt");
  ModelOptions pinned = options_for(path);
  ASSERT_TRUE(pin_torchscript_model(&pinned).ok());
  Result<std::string> digest = file_sha256(path);
  ASSERT_TRUE(digest.ok());
  EXPECT_EQ(pinned.sha256, *digest);
  EXPECT_EQ(pinned.sha256.size(), 64u);
  ASSERT_EQ(pinned.layout.size(), 10u);  // 8 parameters + 2 buffers
  // The module's own tensors first, then its submodules' (PyTorch's state_dict order).
  EXPECT_EQ(pinned.layout[0].name, "backbone.fc_w");
  EXPECT_EQ(pinned.layout[0].shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(pinned.layout[2].name, "backbone.body.conv_w");

  // The same file on the client: accepted.
  Model same = build(options_for(path));
  EXPECT_TRUE(check_torchscript_pins(pinned, *same, path).ok());

  // Another width: the first differing tensor is named with both specs.
  ScriptedNetSpec narrow;
  narrow.width = 4;
  const std::string narrow_path = save(narrow, "narrow.pt");
  Model other = build(options_for(narrow_path));
  Status layout = check_torchscript_pins(pinned, *other, narrow_path);
  EXPECT_EQ(layout.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(layout.message().find("the coordinator's model has \"backbone.fc_w\" float32 [16,8], "
                                  "this client's module (" +
                                  narrow_path + ") has \"backbone.fc_w\" float32 [16,4]"),
            std::string::npos)
      << layout.to_string();

  // Same tensors, other weights: the digest tells them apart.
  ScriptedNetSpec reseeded;
  reseeded.seed = 2;
  const std::string reseeded_path = save(reseeded, "reseeded.pt");
  Model twin = build(options_for(reseeded_path));
  Status sha = check_torchscript_pins(pinned, *twin, reseeded_path);
  EXPECT_EQ(sha.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(sha.message().find("model.sha256: this client's module"), std::string::npos)
      << sha.to_string();

  // A configured digest must be the file's.
  ModelOptions wrong = options_for(path);
  wrong.sha256 = std::string(64, '0');
  Status configured = pin_torchscript_model(&wrong);
  EXPECT_NE(configured.message().find("model.sha256: the config says 000"), std::string::npos)
      << configured.to_string();
}

}  // namespace
}  // namespace fedtail
