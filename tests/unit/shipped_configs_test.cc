// The configs shipped in simulations/configs/ pass the checks that need no data, and the check of
// a simulation config (simulations/config_check.h) finds what every run would refuse at start:
// a combination a strategy refuses at initialize, absent data (naming the key), data that does
// not build; the pre-flight of Simulation::create stops before anything is created.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/run_config.h"
#include "simulations/config_check.h"
#include "simulations/data_presence.h"
#include "simulations/simulation.h"
#include "strategies/registry.h"
#include "tests/support/sim_configs.h"

namespace fedtail::simulation {
namespace {

namespace fs = std::filesystem;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

bool have_fashion_mnist() {
  return fs::exists(std::string(kFashionMnist) + "/train-labels-idx1-ubyte.gz") ||
         fs::exists(std::string(kFashionMnist) + "/train-labels-idx1-ubyte");
}

std::vector<fs::path> shipped_configs() {
  std::vector<fs::path> files;
  for (const auto& item :
       fs::directory_iterator(fs::path(FEDTAIL_SOURCE_DIR) / "simulations" / "configs")) {
    if (item.path().extension() == ".json") files.push_back(item.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// A config for fedtail-train (one machine, no federation): no strategy, rounds or simulation.
bool single_machine_config(const nlohmann::json& config) {
  return !config.contains("strategy") && !config.contains("rounds") &&
         !config.contains("simulation");
}

// Runs the test from the repository root, where the configs' relative data roots point.
class InSourceDir {
 public:
  InSourceDir() : before_(fs::current_path()) { fs::current_path(FEDTAIL_SOURCE_DIR); }
  ~InSourceDir() { fs::current_path(before_); }

 private:
  fs::path before_;
};

// FedAvg and FedRoD on the tiny federation, with a balanced-softmax local loss that FedRoD
// refuses at initialize (it trains with its own losses).
nlohmann::json fedrod_with_balanced_softmax() {
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["local"]["loss"] = "balanced_softmax";
  config["simulation"]["strategies"] = {{{"name", "fedavg"}}, {{"name", "fedrod"}}};
  return config;
}

const EntryCheck& entry(const CheckReport& report, const std::string& label) {
  for (const EntryCheck& e : report.entries) {
    if (e.label == label) return e;
  }
  ADD_FAILURE() << "no entry " << label;
  static const EntryCheck kNone;
  return kNone;
}

class ConfigCheckTest : public ::testing::Test {
 protected:
  void SetUp() override { strategies::register_builtin_strategies(); }
};

TEST_F(ConfigCheckTest, EveryShippedConfigPassesTheChecksWithoutData) {
  InSourceDir in_source;
  CheckOptions options;
  options.build_data = false;  // the plan, the factories, the model options
  options.initialize = false;
  const std::vector<fs::path> files = shipped_configs();
  ASSERT_GE(files.size(), 10u);
  for (const fs::path& file : files) {
    SCOPED_TRACE(file.filename().string());
    Result<nlohmann::json> config = load_json_file(file.string());
    ASSERT_TRUE(config.ok()) << config.status().to_string();
    if (single_machine_config(*config)) {
      EXPECT_TRUE(parse_run_config(*config).ok()) << parse_run_config(*config).status().to_string();
      continue;
    }
    PlanFlags flags;
    flags.config_dir = file.parent_path().string();  // as fedtail-sim sets it
    Result<CheckReport> report = check_simulation(*config, flags, options);
    ASSERT_TRUE(report.ok()) << report.status().to_string();
    ASSERT_FALSE(report->entries.empty());
    for (const EntryCheck& e : report->entries) {
      EXPECT_TRUE(e.ok()) << e.label << ": " << e.status.to_string();
      EXPECT_FALSE(e.model.empty()) << e.label;
    }
    ASSERT_FALSE(report->data.empty());
    for (const DataSectionCheck& section : report->data) {
      // Absent data is allowed (the CIFAR sets do not ship); the message names the key.
      if (section.presence.ok()) continue;
      EXPECT_NE(section.presence.message().find("config.data.root"), std::string::npos)
          << section.presence.message();
      EXPECT_NE(format_check_report(*report).find("data  absent  config.data"), std::string::npos);
    }
  }
}

TEST_F(ConfigCheckTest, CatchesACombinationRefusedAtInitializeWithTheData) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  Result<CheckReport> report = check_simulation(fedrod_with_balanced_softmax(), {}, {});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  ASSERT_EQ(report->data.size(), 1u);  // one data set, built once for both strategies
  EXPECT_TRUE(report->data[0].built);
  EXPECT_TRUE(report->data[0].ok()) << report->data[0].build.to_string();
  EXPECT_EQ(report->data[0].labels, (std::vector<std::string>{"fedavg", "fedrod"}));

  const EntryCheck& fedavg = entry(*report, "fedavg");
  EXPECT_TRUE(fedavg.ok()) << fedavg.status.to_string();
  EXPECT_TRUE(fedavg.with_data);
  EXPECT_TRUE(fedavg.initialized);
  const EntryCheck& fedrod = entry(*report, "fedrod");
  ASSERT_FALSE(fedrod.ok());
  EXPECT_NE(fedrod.status.message().find("strategy fedrod: initialize: config.local.loss"),
            std::string::npos)
      << fedrod.status.message();

  EXPECT_FALSE(report->ok());
  const std::string text = format_check_report(*report);
  EXPECT_NE(text.find("data  ok      config.data (fashion-mnist; every strategy): 10 classes, "
                      "1x28x28"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("ok    fedavg  (fedavg, cnn, 1 round, 4 clients, 1 seed)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("FAIL  fedrod: strategy fedrod: initialize: config.local.loss"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("check failed: 1 of 2 strategies failed"), std::string::npos) << text;
  const Status status = check_status(*report);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message().rfind("strategy \"fedrod\": ", 0), 0u) << status.message();

  // --strategies keeps only FedAvg: the check passes.
  PlanFlags flags;
  flags.strategies = {"fedavg"};
  report = check_simulation(fedrod_with_balanced_softmax(), flags, {});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_TRUE(report->ok()) << format_check_report(*report);
  EXPECT_TRUE(check_status(*report).ok());
  EXPECT_NE(format_check_report(*report).find("check passed: 1 strategy x 1 seed = 1 run"),
            std::string::npos);
}

TEST_F(ConfigCheckTest, AbsentDataIsSaidOnceAndTheRestIsCheckedWithoutIt) {
  nlohmann::json config = fedrod_with_balanced_softmax();
  const std::string root = "/nonexistent/fedtail-test/fashion-mnist";
  config["data"]["root"] = root;
  Result<CheckReport> report = check_simulation(config, {}, {});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  ASSERT_EQ(report->data.size(), 1u);
  EXPECT_EQ(report->data[0].presence.code(), StatusCode::kNotFound);
  EXPECT_EQ(report->data[0].presence.message(),
            "config.data.root: " + root + " is not a directory");
  EXPECT_FALSE(report->data[0].built);

  // Initialized on what "fashion-mnist" tells (10 classes, 1x28x28): FedRoD's refusal is found.
  const EntryCheck& fedavg = entry(*report, "fedavg");
  EXPECT_TRUE(fedavg.ok()) << fedavg.status.to_string();
  EXPECT_FALSE(fedavg.with_data);
  EXPECT_TRUE(fedavg.initialized);
  EXPECT_FALSE(entry(*report, "fedrod").ok());

  const std::string text = format_check_report(*report);
  EXPECT_NE(text.find("data  absent  config.data (fashion-mnist; every strategy): "
                      "config.data.root: " +
                      root + " is not a directory"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("; initialized without the data)"), std::string::npos) << text;
  EXPECT_NE(text.find("check failed: 1 of 2 strategies failed; 1 data set is absent (see above): "
                      "no run can start until it is there"),
            std::string::npos)
      << text;

  // The pre-flight's one message puts the data first and counts the rest.
  const Status status = check_status(*report);
  EXPECT_EQ(status.message(), "config.data.root: " + root +
                                  " is not a directory (the data of every strategy); and 1 more "
                                  "problem (fedtail-sim --check CONFIG lists them)");
}

TEST_F(ConfigCheckTest, ARelativeRootSaysWhatItIsRelativeTo) {
  DataOptions options;
  options.dataset = "cifar100";
  options.root = "no-such-dir/cifar-100-binary";
  const Status status = check_data_present(options, "config.data");
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "config.data.root: no-such-dir/cifar-100-binary (relative to " +
                                  fs::current_path().string() + ") is not a directory");

  options.root.clear();  // CIFAR has no default root
  EXPECT_EQ(check_data_present(options, "config.data").code(), StatusCode::kInvalidArgument);
}

TEST_F(ConfigCheckTest, AnEmptyRootFolderNamesWhatWasLookedFor) {
  const fs::path dir = fs::path(FEDTAIL_TEST_TMP) / "shipped_configs_test" / "empty-root";
  fs::remove_all(dir);
  fs::create_directories(dir);
  DataOptions options;
  options.dataset = "cifar10";
  options.root = dir.string();
  Status status = check_data_present(options, "config.data");
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("config.data.root: " + dir.string() +
                                  ": no cifar10 train data (looked for data_batch_1..5.bin"),
            std::string::npos)
      << status.message();

  // Binary batches: all five are needed.
  std::ofstream(dir / "data_batch_1.bin") << "x";
  std::ofstream(dir / "test_batch.bin") << "x";
  status = check_data_present(options, "config.data");
  EXPECT_NE(status.message().find("missing " + (dir / "data_batch_2.bin").string()),
            std::string::npos)
      << status.message();
  for (int b = 2; b <= 5; ++b) {
    std::ofstream(dir / ("data_batch_" + std::to_string(b) + ".bin")) << "x";
  }
  EXPECT_TRUE(check_data_present(options, "config.data").ok());

  // An image folder with the wrong number of classes.
  options.dataset = "folder";
  fs::create_directories(dir / "train" / "a");
  fs::create_directories(dir / "test" / "b");
  status = check_data_present(options, "config.data");
  EXPECT_NE(status.message().find("class folders differ"), std::string::npos) << status.message();
}

TEST_F(ConfigCheckTest, DataThatDoesNotBuildFailsOnce) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["data"].erase("max_examples_per_class");
  config["data"]["validation_per_class"] = 7000;  // Fashion-MNIST has 6000 per class
  Result<CheckReport> report = check_simulation(config, {}, {});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  ASSERT_EQ(report->data.size(), 1u);
  EXPECT_TRUE(report->data[0].presence.ok());
  EXPECT_NE(report->data[0].build.message().find("config.data.validation_per_class: class"),
            std::string::npos)
      << report->data[0].build.to_string();
  EXPECT_EQ(report->failed_data(), 1);
  EXPECT_EQ(report->failed_entries(), 0);
  EXPECT_FALSE(report->ok());
  EXPECT_EQ(entry(*report, "fedavg").not_initialized, "its data set does not build");
  EXPECT_NE(format_check_report(*report).find("data  FAIL    config.data"), std::string::npos);
}

TEST_F(ConfigCheckTest, OverridesThatChangeTheDataMakeTheirOwnSection) {
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["data"]["root"] = "/nonexistent/a";
  config["simulation"]["strategies"] = {{{"name", "fedavg"}},
                                        {{"name", "fedavg"},
                                         {"label", "other-root"},
                                         {"overrides", {{"data", {{"root", "/nonexistent/b"}}}}}},
                                        {{"name", "fedprox"}, {"mu", -1}}};
  CheckOptions options;
  options.initialize = false;
  Result<CheckReport> report = check_simulation(config, {}, options);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  ASSERT_EQ(report->data.size(), 2u);
  EXPECT_EQ(report->data[0].labels, (std::vector<std::string>{"fedavg", "fedprox"}));
  EXPECT_FALSE(report->data[0].overridden);
  EXPECT_EQ(report->data[1].labels, (std::vector<std::string>{"other-root"}));
  EXPECT_TRUE(report->data[1].overridden);
  EXPECT_NE(report->data[1].presence.message().find("/nonexistent/b"), std::string::npos);
  // A bad strategy option is found by the factory, without data.
  EXPECT_NE(entry(*report, "fedprox").status.message().find("config.strategy.mu"),
            std::string::npos)
      << entry(*report, "fedprox").status.message();
  EXPECT_NE(format_check_report(*report).find(
                "data  absent  config.data with overrides (fashion-mnist; other-root)"),
            std::string::npos)
      << format_check_report(*report);
}

TEST_F(ConfigCheckTest, OneMissingRootIsReportedOnce) {
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["data"]["root"] = "/nonexistent/fmnist";
  config["simulation"]["strategies"] = {
      {{"name", "fedavg"}},
      {{"name", "fedavg"},
       {"label", "fedavg-validation"},
       {"overrides", {{"data", {{"validation_per_class", 10}}}}}}};
  Result<CheckReport> report = check_simulation(config, {}, {});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(report->data.size(), 2u);  // two data sets, one missing root
  const std::string text = format_check_report(*report);
  EXPECT_NE(text.find("data  absent  config.data (fashion-mnist; every strategy): "
                      "config.data.root: /nonexistent/fmnist is not a directory\n"
                      "ok    fedavg  "),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("1 data set is absent"), std::string::npos) << text;
  EXPECT_EQ(check_status(*report).message(),
            "config.data.root: /nonexistent/fmnist is not a directory (the data of every "
            "strategy)");
}

TEST_F(ConfigCheckTest, ThePlanErrorIsReturned) {
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  PlanFlags flags;
  flags.strategies = {"fedx"};
  Result<CheckReport> report = check_simulation(config, flags, {});
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("--strategies: no strategy \"fedx\""),
            std::string::npos);
}

TEST_F(ConfigCheckTest, DeviceTracesAreReadRelativeToTheConfig) {
  const fs::path dir = fs::path(FEDTAIL_TEST_TMP) / "shipped_configs_test" / "devices";
  fs::create_directories(dir / "traces");
  std::ofstream(dir / "traces" / "devices.csv") << "slowdown,bandwidth_mbps,latency_ms\n2,10,50\n";
  std::ofstream(dir / "traces" / "bad.csv") << "# comment\nslowdown,bandwidth_mbps,latency_ms\n"
                                               "2,10,50\n3,-1,50\n";
  std::ofstream(dir / "off.csv") << "client,off_from_s,off_to_s\nclient-1,5,x\n";
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["simulation"]["devices"] = {{"trace", "traces/devices.csv"}};
  PlanFlags flags;
  flags.config_dir = dir.string();
  CheckOptions options;
  options.build_data = false;
  options.initialize = false;
  Result<CheckReport> report = check_simulation(config, flags, options);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  for (const EntryCheck& e : report->entries) EXPECT_TRUE(e.ok()) << e.status.to_string();

  // A malformed row: every entry fails, naming the section, the file and the line.
  config["simulation"]["devices"]["trace"] = "traces/bad.csv";
  report = check_simulation(config, flags, options);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  ASSERT_FALSE(report->entries.empty());
  EXPECT_EQ(report->entries[0].status.message(),
            "config.simulation.devices.trace: " + (dir / "traces" / "bad.csv").string() +
                ":4: bandwidth_mbps: must be > 0 (got -1)");
  EXPECT_NE(check_status(*report).message().find("config.simulation.devices.trace: "),
            std::string::npos);

  // The availability trace, and a missing file.
  config["simulation"]["devices"] = {{"availability", {{"trace", "off.csv"}}}};
  report = check_simulation(config, flags, options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->entries[0].status.message(),
            "config.simulation.devices.availability.trace: " + (dir / "off.csv").string() +
                ":2: off_to_s: expected a number or inf (got \"x\")");
  config["simulation"]["devices"] = {{"trace", "missing.csv"}};
  report = check_simulation(config, flags, options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->entries[0].status.code(), StatusCode::kNotFound);
  EXPECT_NE(report->entries[0].status.message().find("config.simulation.devices.trace: " +
                                                     (dir / "missing.csv").string()),
            std::string::npos);
}

TEST_F(ConfigCheckTest, SimulationPreflightStopsBeforeAnythingIsCreated) {
  const fs::path dir = fs::path(FEDTAIL_TEST_TMP) / "shipped_configs_test" / "preflight";
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json config = test_support::tiny_sim_config(/*rounds=*/1);
  config["data"]["root"] = "/nonexistent/fedtail-test/fmnist";
  config["simulation"]["strategies"] = {{{"name", "fedavg"}}, {{"name", "fedprox"}}};
  config["simulation"]["seeds"] = 3;
  const std::string config_path = (dir / "sim.json").string();
  std::ofstream(config_path) << config.dump(2);

  SimulationOptions options;
  options.config_path = config_path;
  options.out_dir = (dir / "out").string();
  options.client_binary = "/bin/true";  // not reached
  Result<std::unique_ptr<Simulation>> created = Simulation::create(options);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(created.status().message(),
            config_path +
                ": cannot start: config.data.root: /nonexistent/fedtail-test/fmnist is not a "
                "directory (the data of every strategy)");
  EXPECT_FALSE(fs::exists(dir / "out"));

  // --set repairs it (the root) or breaks it (a strategy option), before the pre-flight.
  if (have_fashion_mnist()) {
    options.overrides = {"data.root=" + std::string(kFashionMnist),
                         "simulation.strategies.1.mu=-1"};
    created = Simulation::create(options);
    ASSERT_FALSE(created.ok());
    EXPECT_NE(created.status().message().find(
                  ": cannot start: strategy \"fedprox\": server strategy: config.strategy.mu"),
              std::string::npos)
        << created.status().message();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
  options.overrides = {"data..root=1"};
  created = Simulation::create(options);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().message(), "--set data..root: empty key");
}

}  // namespace
}  // namespace fedtail::simulation
