// A strategy author's journey out of tree: install fedtail into a temporary prefix (cmake
// --install), build the installed example plugin (share/fedtail/examples/fedavgm, strategy
// "fedavgm_example") as a project of its own with find_package(fedtail) +
// fedtail_add_strategy_plugin, and run a federation of the installed fedtail-sim (coordinator +
// fedtail-client workers over gRPC) with the plugin loaded.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"
#include "tests/support/sim_configs.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using test_support::run_cli;

// The shell word for `path`, single-quoted.
std::string quoted(const std::string& path) { return "'" + path + "'"; }

TEST(OutOfTreePlugin, BuildsAgainstAnInstalledFedtailAndRunsAFederation) {
  const std::string missing = test_support::missing_federation_prerequisite();
  if (!missing.empty()) GTEST_SKIP() << missing;
  const std::string dir = test_support::scratch_dir("out-of-tree");
  const std::string prefix = dir + "/prefix";
  const std::string cmake = quoted(FEDTAIL_CMAKE_COMMAND);

  // 1. Install.
  test_support::CliRun install =
      run_cli(cmake, "--install " + quoted(FEDTAIL_BUILD_DIR) + " --prefix " + quoted(prefix));
  ASSERT_EQ(install.exit_code, 0) << install.out << install.err;
  for (const char* file :
       {"bin/fedtail-sim", "bin/fedtail-client", "bin/fedtail-coordinator", "bin/fedtail-certs",
        "include/fedtail/strategies/strategy.h", "include/fedtail/strategies/registry.h",
        "include/fedtail/strategies/fedavg/fedavg.h", "include/fedtail/common/base/status.h",
        "include/fedtail/common/wire/tensor_bundle.h", "include/fedtail/fedtail/v1/bundle.pb.h",
        "lib/cmake/fedtail/fedtailConfig.cmake", "lib/cmake/fedtail/fedtailConfigVersion.cmake",
        "lib/cmake/fedtail/fedtail_plugin.cmake", "lib/fedtail/libfedtail_fedavgm.so",
        "share/fedtail/examples/fedavgm/CMakeLists.txt", "share/fedtail/configs/smoke.json",
        "share/fedtail/proto/fedtail/v1/federation.proto"}) {
    EXPECT_TRUE(fs::exists(prefix + "/" + file)) << file;
  }

  size_t installed = 0;
  for (const auto& entry : fs::recursive_directory_iterator(prefix))
    installed += entry.is_regular_file();
  std::printf("installed %zu files into %s\n", installed, prefix.c_str());

  // 2. Build the installed example on its own: nothing of the source tree is on its include path.
  const std::string source = prefix + "/share/fedtail/examples/fedavgm";
  const std::string build = dir + "/plugin-build";
  test_support::CliRun configure =
      run_cli(cmake, "-S " + quoted(source) + " -B " + quoted(build) + " -G " +
                         quoted(FEDTAIL_CMAKE_GENERATOR) + " -DCMAKE_BUILD_TYPE=Release" +
                         " -DCMAKE_CXX_COMPILER=" + quoted(FEDTAIL_CXX_COMPILER) +
                         " -DCMAKE_PREFIX_PATH=" + quoted(prefix));
  ASSERT_EQ(configure.exit_code, 0) << configure.out << configure.err;
  test_support::CliRun compile = run_cli(cmake, "--build " + quoted(build));
  ASSERT_EQ(compile.exit_code, 0) << compile.out << compile.err;
  const std::string plugin = build + "/libfedtail_fedavgm.so";
  ASSERT_TRUE(fs::exists(plugin)) << compile.out;
  std::printf("built %s (%ju bytes) from %s\n", plugin.c_str(),
              static_cast<uintmax_t>(fs::file_size(plugin)), source.c_str());
  // Its headers came from the prefix.
  const std::string commands =
      test_support::read_file(build + "/CMakeFiles/fedtail_fedavgm.dir/flags.make") +
      test_support::read_file(build + "/build.ninja");
  EXPECT_NE(commands.find(prefix + "/include/fedtail"), std::string::npos);
  EXPECT_EQ(commands.find(FEDTAIL_SOURCE_DIR "/strategies"), std::string::npos);

  // 3. A federation of the installed binaries with the plugin's strategy.
  // Three rounds of five local epochs: enough for the global model to leave chance (10%).
  nlohmann::json config = test_support::tiny_sim_config(3);
  config["local"] = {{"epochs", 5}, {"batch_size", 16}, {"lr", 0.05}};
  config["simulation"] = {{"strategies", {{{"name", "fedavgm_example"}, {"momentum", 0.5}}}}};
  test_support::write_file(dir + "/sim.json", config.dump(2));
  const std::string out = dir + "/out";
  test_support::CliRun sim = run_cli(quoted(prefix + "/bin/fedtail-sim"),
                                     quoted(dir + "/sim.json") + " --out " + quoted(out) +
                                         " --workers 2 --plugin " + quoted(plugin));
  ASSERT_EQ(sim.exit_code, 0) << sim.err << test_support::read_file(out + "/sim.log");
  const nlohmann::json summary =
      nlohmann::json::parse(test_support::read_file(out + "/summary.json"));
  ASSERT_EQ(summary["runs"].size(), 1u) << summary.dump(2);
  const nlohmann::json& run = summary["runs"][0];
  EXPECT_EQ(run["strategy"], "fedavgm_example");
  EXPECT_EQ(run["status"], "completed");
  EXPECT_EQ(run["rounds_completed"], 3);
  ASSERT_TRUE(run["final"]["generic_accuracy"].is_number());
  EXPECT_GT(run["final"]["generic_accuracy"].get<double>(), 0.2);  // seed 3 gives 0.3453
  std::printf("federation with the plugin: strategy %s, %d rounds, generic accuracy %.2f%%\n",
              run["strategy"].get<std::string>().c_str(), run["rounds_completed"].get<int>(),
              100 * run["final"]["generic_accuracy"].get<double>());
  // Every round folded the four clients' updates: the workers loaded the plugin too.
  const std::vector<nlohmann::json> lines = test_support::metrics_lines(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (const nlohmann::json& line : lines) EXPECT_EQ(line["fit"]["updates"], 4) << line.dump();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fedtail
