// config.model.arch "torchscript" end to end: a module built in C++ (no Python needed) trained by
// fedtail-sim with FedAvg and FedLoGe; clients whose module differs from the coordinator's are
// refused at join naming the first difference (layout) or the digest; and, where Debian's
// python3-torch is installed, tools/export_model.py's output loads as a fedtail model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/learning/torchscript_model.h"
#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"
#include "tests/support/torchscript_modules.h"

namespace fedtail {
namespace {

using namespace std::chrono_literals;
using test_support::binary_path;
using test_support::Process;
using test_support::run_cli;
using test_support::ScriptedNetSpec;

class TorchScriptFederationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("torchscript_federation");
    module_ = dir_ + "/net.pt";
    test_support::save_scripted_net({}, module_);
  }
  std::string dir_;
  std::string module_;
};

TEST_F(TorchScriptFederationTest, FedAvgAndFedLoGeTrainAUsersModule) {
  nlohmann::json config = test_support::tiny_sim_config(2);
  config["model"] = {{"arch", "torchscript"}, {"path", module_}};
  config["simulation"] = {{"strategies", {{{"name", "fedavg"}}, {{"name", "fedloge"}}}}};
  const std::string path = dir_ + "/sim.json";
  test_support::write_file(path, config.dump(2));
  const std::string out = dir_ + "/out";
  test_support::CliRun r =
      run_cli(binary_path("fedtail-sim"), path + " --out " + out + " --workers 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << test_support::read_file(out + "/sim.log");
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 2u);
  for (const nlohmann::json& run : summary["runs"]) {
    EXPECT_EQ(run["status"], "completed") << run.dump();
    EXPECT_EQ(run["rounds_completed"], 2);
    EXPECT_TRUE(run["final"]["generic_accuracy"].is_number()) << run.dump();
  }
  // The coordinator pinned the module (digest and 10 tensors) in the run config clients got.
  Result<std::string> digest = file_sha256(module_);
  ASSERT_TRUE(digest.ok());
  const std::string log = test_support::read_file(out + "/sim.log");
  EXPECT_NE(log.find("TorchScript model " + module_ + ": sha256 " + *digest + ", 10 tensors"),
            std::string::npos)
      << log;
}

TEST_F(TorchScriptFederationTest, ClientsWithAnotherModuleAreRefusedAtJoin) {
  nlohmann::json config = {{"seed", 3},
                           {"threads", 1},
                           {"device", "cpu"},
                           {"rounds", 1},
                           {"strategy", {{"name", "fedavg"}, {"fraction_evaluate", 0.0}}},
                           {"federation",
                            {{"min_available_clients", 2},
                             {"poll_timeout_ms", 1000},
                             {"heartbeat_interval_ms", 500},
                             {"server_eval", false}}},
                           {"data",
                            {{"dataset", "fashion-mnist"},
                             {"max_examples_per_class", 20},
                             {"partition", "iid"},
                             {"clients", 2}}},
                           {"model", {{"arch", "torchscript"}, {"path", module_}}},
                           {"local", {{"max_steps", 1}, {"batch_size", 16}}}};
  test_support::write_file(dir_ + "/run.json", config.dump());
  Process coordinator({binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json",
                       "--listen", "127.0.0.1:0", "--state-dir", dir_ + "/coord"},
                      dir_ + "/coordinator.log");
  const std::string port = test_support::wait_for_file(dir_ + "/coord/port", 60s);
  ASSERT_FALSE(port.empty()) << coordinator.log();
  const std::string target = "127.0.0.1:" + port;
  // One fedtail-client hosting virtual client k with its own copy of the module
  // k -1: both clients.
  auto join = [&](int k, const std::string& state, const std::string& module) {
    const std::string range = k < 0 ? "0-1" : std::to_string(k) + "-" + std::to_string(k);
    return run_cli(binary_path("fedtail-client"), "--coordinator " + target + " --clients " +
                                                      range + " --retry-timeout 20 --state-dir " +
                                                      dir_ + "/" + state + " --model-path " +
                                                      module);
  };

  ScriptedNetSpec narrow;
  narrow.width = 4;
  const std::string narrow_path = dir_ + "/narrow.pt";
  test_support::save_scripted_net(narrow, narrow_path);
  test_support::CliRun layout = join(0, "s1", narrow_path);
  EXPECT_NE(layout.exit_code, 0);
  EXPECT_NE(layout.err.find("the coordinator's model has \"backbone.fc_w\" float32 [16,8], "
                            "this client's module (" +
                            narrow_path + ") has \"backbone.fc_w\" float32 [16,4]"),
            std::string::npos)
      << layout.err;

  ScriptedNetSpec reseeded;
  reseeded.seed = 9;
  const std::string reseeded_path = dir_ + "/reseeded.pt";
  test_support::save_scripted_net(reseeded, reseeded_path);
  test_support::CliRun sha = join(1, "s2", reseeded_path);
  EXPECT_NE(sha.exit_code, 0);
  EXPECT_NE(sha.err.find("model.sha256: this client's module (" + reseeded_path + ") has SHA-256"),
            std::string::npos)
      << sha.err;

  // The coordinator's own file is accepted: one process hosting both clients (the round waits for
  // two, so the refused ones above were never selected) runs the round to the end.
  test_support::CliRun same = join(-1, "s3", module_);
  EXPECT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(coordinator.wait(60s), 0) << coordinator.log();
  // The refused clients told the coordinator why.
  EXPECT_NE(coordinator.log().find("left (1 client(s)): cannot take part: model.layout: tensor 0"),
            std::string::npos)
      << coordinator.log();
  EXPECT_NE(coordinator.log().find("left (1 client(s)): cannot take part: model.sha256"),
            std::string::npos)
      << coordinator.log();
}

TEST(TorchScriptExportScript, ExportedModelLoadsAsAFedtailModel) {
  const std::string python = "/usr/bin/python3";
  if (!std::filesystem::exists(python) || run_cli(python, "-c 'import torch'").exit_code != 0) {
    GTEST_SKIP() << "Debian's python3-torch is not installed";
  }
  const std::string dir = test_support::scratch_dir("export_model");
  const std::string out = dir + "/model.pt";
  test_support::CliRun r =
      run_cli(python, std::string(FEDTAIL_SOURCE_DIR) + "/tools/export_model.py --out " + out +
                          " --in-channels 3 --classes 7 --image-size 32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("features(x) -> N x 64, head -> 7 classes"), std::string::npos) << r.out;
  ModelOptions options;
  options.arch = kTorchScriptArch;
  options.path = out;
  options.in_channels = 3;
  options.image_size = 32;
  options.num_classes = 7;
  Rng rng(1);
  Result<Model> model = make_model(options, rng);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  EXPECT_EQ((*model)->feature_dim(), 64);
  auto names = (*model)->named_parameters();
  EXPECT_TRUE(names.contains("backbone.body.0.weight"));  // the first Conv2d of `body`
  EXPECT_TRUE(names.contains("heads.classifier.weight"));
  EXPECT_TRUE((*model)->named_buffers().contains("backbone.body.1.running_mean"));
  torch::NoGradGuard no_grad;
  (*model)->eval();
  EXPECT_EQ((*model)->forward(torch::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 7}));
}

}  // namespace
}  // namespace fedtail
