// Loads the example plugin <build>/lib/libfedtail_fedavgm.so (strategy "fedavgm_example") into this
// test binary (built with ENABLE_EXPORTS, so the plugin resolves fedtail's symbols from it), and
// checks it against the built-in FedAvgM (strategies/fedopt/fedopt.h).
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "strategies/fedavg/fedavg.h"
#include "strategies/fedopt/fedopt.h"
#include "strategies/registry.h"
#include "tests/unit/strategy_test_util.h"

namespace fedtail::strategies {
namespace {

const char kPluginPath[] = FEDTAIL_BIN_DIR "/../lib/libfedtail_fedavgm.so";
// The strategy the plugin registers (the built-in FedAvgM is "fedavgm").
const char kExample[] = "fedavgm_example";

class PluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    register_builtin_strategies();
    Status loaded = load_plugin(kPluginPath);
    ASSERT_TRUE(loaded.ok()) << loaded.to_string();
    config_ = testing::tiny_config();
    run_ = testing::run_context(config_);
  }

  std::unique_ptr<ServerStrategy> initialized(const std::string& name,
                                              const nlohmann::json& strategy_config) {
    auto s = make_server_strategy(name, strategy_config);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    Rng init(5);  // the same initial model for every server
    Status st = (*s)->initialize(run_, init);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return std::move(s).value();
  }

  // Synthetic updates around `global`: every float element perturbed, counters changed.
  std::vector<ClientUpdate> updates_around(const TensorBundle& global, uint64_t seed) {
    std::vector<ClientUpdate> out;
    Rng rng(seed);
    for (int k = 0; k < 3; ++k) {
      ClientUpdate u;
      u.client_id = "client-" + std::to_string(k);
      u.num_examples = 10 + 7 * k;
      u.bundle = global.clone();
      u.bundle.mutable_metadata() = nlohmann::json::object();
      for (NamedTensor& t : u.bundle) {
        if (t.dtype() == DType::kFloat32) {
          for (int64_t i = 0; i < t.numel(); ++i) {
            t.data<float>()[i] += static_cast<float>(0.01 * rng.normal());
          }
        } else if (t.dtype() == DType::kInt64) {
          for (int64_t i = 0; i < t.numel(); ++i) t.data<int64_t>()[i] += 3 + k;
        }
      }
      out.push_back(std::move(u));
    }
    return out;
  }

  // Runs one aggregation of copies of `updates` on `server`.
  void aggregate(ServerStrategy& server, int round, const std::vector<ClientUpdate>& updates) {
    auto agg = server.begin_aggregation(round);
    ASSERT_TRUE(agg.ok()) << agg.status().to_string();
    for (const ClientUpdate& u : updates) {
      ClientUpdate copy;
      copy.client_id = u.client_id;
      copy.num_examples = u.num_examples;
      copy.bundle = u.bundle.clone();
      Status added = (*agg)->add(std::move(copy));
      ASSERT_TRUE(added.ok()) << added.to_string();
    }
    auto m = (*agg)->finish({});
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    EXPECT_EQ((*m)["updated"], true) << m->dump();
  }

  // Same tensors byte for byte (the metadata names the strategy, so it differs).
  static bool same_tensors(const TensorBundle& a, const TensorBundle& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a.at(i).bitwise_equal(b.at(i))) return false;
    }
    return true;
  }

  RunConfig config_;
  RunContext run_;
};

TEST_F(PluginTest, RegistersFedAvgMExampleAndLoadingTwiceIsHarmless) {
  const auto names = strategy_names();
  EXPECT_NE(std::find(names.begin(), names.end(), kExample), names.end());
  auto entry = find_strategy(kExample);
  ASSERT_TRUE(entry.ok());
  EXPECT_NE(entry->description.find("momentum"), std::string::npos);
  EXPECT_NE(entry->description.find("example"), std::string::npos);
  Status again = load_plugin(kPluginPath);
  EXPECT_TRUE(again.ok()) << again.to_string();

  // Its options are validated with their JSON paths.
  auto bad = make_server_strategy(kExample, {{"momentum", 1.5}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("config.strategy.momentum: must be in [0, 1)"),
            std::string::npos)
      << bad.status().message();
  auto bad_client = make_client_algorithm(kExample, {{"server_lr", 0.0}});
  ASSERT_FALSE(bad_client.ok());
  EXPECT_NE(bad_client.status().message().find("config.strategy.server_lr"), std::string::npos);
  // Its client is the host's FedAvg client.
  auto client = make_client_algorithm(kExample, {{"momentum", 0.5}, {"min_fit_clients", 1}});
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  EXPECT_NE(dynamic_cast<FedAvgClient*>(client->get()), nullptr);
}

TEST_F(PluginTest, AMissingFileIsNotFoundAndNamesThePath) {
  Status s = load_plugin("/nonexistent/dir/libfedtail_nothing.so");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("/nonexistent/dir/libfedtail_nothing.so"), std::string::npos)
      << s.message();
}

// A fresh directory of mode 0755 for plugin files (whatever the umask), its path.
std::string plugin_dir(const std::string& name) {
  const std::string dir = std::string(FEDTAIL_TEST_TMP) + "/plugin_test/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  EXPECT_EQ(::chmod(dir.c_str(), 0755), 0) << dir;
  return dir;
}

TEST_F(PluginTest, AFileThatIsNotALibraryIsRefusedWithTheLoadersMessage) {
  const std::string path = plugin_dir("not-a-library") + "/not_a_library.so";
  std::ofstream(path) << "this is not an ELF file\n";
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  Status s = load_plugin(path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("cannot be loaded"), std::string::npos) << s.message();
}

TEST_F(PluginTest, ANameWithoutASlashIsRefusedAskingForAPath) {
  // dlopen would search LD_LIBRARY_PATH (and the system directories) for a bare name.
  Status s = load_plugin("libfedtail_fedavgm.so");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("give a path (e.g. ./libfedtail_fedavgm.so)"), std::string::npos)
      << s.message();
}

TEST_F(PluginTest, AWorldWritablePluginIsRefusedNamingTheFileAndMode) {
  const std::string dir = plugin_dir("world-writable");
  const std::string path = dir + "/libfedtail_copy.so";
  std::filesystem::copy_file(kPluginPath, path);
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  Status s = load_plugin(path);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("libfedtail_copy.so has mode 0666"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("writable by group or others"), std::string::npos) << s.message();
  // Group-writable too.
  ASSERT_EQ(::chmod(path.c_str(), 0775), 0);
  s = load_plugin(path);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("0775"), std::string::npos) << s.message();
}

TEST_F(PluginTest, APluginInADirectoryWritableByOthersIsRefused) {
  const std::string dir = plugin_dir("open-dir");
  const std::string path = dir + "/libfedtail_copy.so";
  std::filesystem::copy_file(kPluginPath, path);
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  Status s = load_plugin(path);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("open-dir has mode 0777"), std::string::npos) << s.message();
  // Through a symlink from a safe directory: the directory of the real file counts.
  const std::string link = plugin_dir("link") + "/libfedtail_link.so";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  s = load_plugin(link);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("open-dir has mode 0777"), std::string::npos) << s.message();
}

TEST_F(PluginTest, ALibraryWithoutTheEntryPointIsRefused) {
  // libc: a real shared library that certainly has no fedtail_plugin_init.
  Dl_info info;
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&std::fclose), &info), 0);
  ASSERT_NE(info.dli_fname, nullptr);
  const std::string path = info.dli_fname;
  Status s = load_plugin(path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("no entry point fedtail_plugin_init"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
}

TEST_F(PluginTest, ZeroMomentumAndUnitServerLrEqualsFedAvg) {
  auto fedavg = initialized("fedavg", {});
  auto fedavgm = initialized(kExample, {{"momentum", 0.0}, {"server_lr", 1.0}});
  ASSERT_TRUE(same_tensors(*fedavg->global_bundle(), *fedavgm->global_bundle()));
  for (int round = 1; round <= 3; ++round) {
    const auto updates = updates_around(*fedavg->global_bundle(), /*seed=*/round);
    aggregate(*fedavg, round, updates);
    aggregate(*fedavgm, round, updates);
    EXPECT_TRUE(same_tensors(*fedavg->global_bundle(), *fedavgm->global_bundle()))
        << "round " << round;
  }
  EXPECT_EQ(fedavgm->global_bundle()->metadata()["strategy"], kExample);
}

TEST_F(PluginTest, MomentumAccumulatesAndResumesBitExactly) {
  const double momentum = 0.9, lr = 0.5;
  const nlohmann::json options = {{"momentum", momentum}, {"server_lr", lr}};
  auto fedavgm = initialized(kExample, options);
  const std::string name = "heads.classifier.bias";
  float velocity = 0;  // the plugin keeps the velocity as float32
  std::unique_ptr<ServerStrategy> resumed;
  for (int round = 1; round <= 3; ++round) {
    const auto updates = updates_around(*fedavgm->global_bundle(), /*seed=*/10 + round);
    // velocity <- momentum * velocity + (mean - global); global <- global + lr * velocity.
    double sum = 0, total = 0;
    for (const ClientUpdate& u : updates) {
      sum += static_cast<double>(u.num_examples) * u.bundle.find(name)->data<float>()[1];
      total += static_cast<double>(u.num_examples);
    }
    const float mean = static_cast<float>(sum / total);
    const double g = fedavgm->global_bundle()->find(name)->data<float>()[1];
    const double v = momentum * velocity + (mean - g);
    const float expected = static_cast<float>(g + lr * v);
    velocity = static_cast<float>(v);

    aggregate(*fedavgm, round, updates);
    EXPECT_FLOAT_EQ(fedavgm->global_bundle()->find(name)->data<float>()[1], expected)
        << "round " << round;
    if (round == 1) {
      // lr 0.5: halfway from the old model to the mean, unlike FedAvg.
      EXPECT_NE(fedavgm->global_bundle()->find(name)->data<float>()[1], mean);
    }
    if (round == 2) {
      // Resume from the state saved after round 2 into a fresh server of the plugin.
      auto saved = fedavgm->save_state();
      ASSERT_TRUE(saved.ok()) << saved.status().to_string();
      EXPECT_NE(saved->find("velocity/" + name), nullptr);
      EXPECT_EQ(saved->find("velocity/backbone.bn1.num_batches_tracked"), nullptr);
      // BatchNorm statistics take the clients' mean, without momentum.
      EXPECT_EQ(saved->find("velocity/backbone.bn1.running_var"), nullptr);
      EXPECT_NE(saved->find("velocity/backbone.bn1.weight"), nullptr);
      auto fresh = make_server_strategy(kExample, options);
      ASSERT_TRUE(fresh.ok());
      Status loaded = (*fresh)->load_state(std::move(saved).value());
      ASSERT_TRUE(loaded.ok()) << loaded.to_string();
      resumed = std::move(fresh).value();
      EXPECT_TRUE(resumed->global_bundle()->bitwise_equal(*fedavgm->global_bundle()));
    }
    if (round == 3) {
      aggregate(*resumed, round, updates);
      EXPECT_TRUE(resumed->global_bundle()->bitwise_equal(*fedavgm->global_bundle()));
      auto a = fedavgm->save_state();
      auto b = resumed->save_state();
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_TRUE(a->bitwise_equal(*b));
    }
  }
}

TEST_F(PluginTest, FedAvgMRefusesAVelocityThatDoesNotFit) {
  auto fedavgm = initialized(kExample, {{"momentum", 0.5}});
  auto state = fedavgm->save_state();
  ASSERT_TRUE(state.ok());
  TensorBundle bad = state->clone();
  ASSERT_TRUE(bad.add_zeros("velocity/heads.classifier.bias", DType::kFloat32, {7}).ok());
  Status st = fedavgm->load_state(std::move(bad));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("velocity/heads.classifier.bias"), std::string::npos) << st.message();
}

TEST_F(PluginTest, TheExampleGivesTheBuiltInFedAvgMsModelsAndVelocityBitForBit) {
  const nlohmann::json options = {{"momentum", 0.9}, {"server_lr", 0.5}};
  auto example = initialized(kExample, options);
  // The built-in straight from its entry (whether or not the registry lists it).
  auto builtin = fedavgm_strategy_entry().server(options);
  ASSERT_TRUE(builtin.ok()) << builtin.status().to_string();
  Rng init(5);  // initialized()'s draws: the same initial model
  ASSERT_TRUE((*builtin)->initialize(run_, init).ok());
  ASSERT_TRUE(same_tensors(*example->global_bundle(), *(*builtin)->global_bundle()));
  for (int round = 1; round <= 3; ++round) {
    const auto updates = updates_around(*example->global_bundle(), /*seed=*/20 + round);
    aggregate(*example, round, updates);
    aggregate(**builtin, round, updates);
    EXPECT_TRUE(same_tensors(*example->global_bundle(), *(*builtin)->global_bundle()))
        << "round " << round;
  }
  // Both states hold the global tensors, then "velocity/<name>" of the same tensors: all equal.
  auto a = example->save_state();
  auto b = (*builtin)->save_state();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(same_tensors(*a, *b));
  EXPECT_NE(a->find("velocity/heads.classifier.weight"), nullptr);
}

}  // namespace
}  // namespace fedtail::strategies
