// The simulation plan: strategies and seeds from a config and the command line, each run's config,
// and path-named errors before anything starts.
#include "simulations/sim_config.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "coordinator/options.h"
#include "simulations/report.h"
#include "simulations/worker_pool.h"

namespace fedtail::simulation {
namespace {

nlohmann::json base() {
  nlohmann::json strategies = nlohmann::json::array();
  strategies.push_back({{"name", "fedavg"}});
  strategies.push_back({{"name", "fedprox"}, {"mu", 0.1}});
  strategies.push_back({{"name", "fedavg"},
                        {"label", "fedavg-small-lr"},
                        {"overrides", {{"local", {{"lr", 0.001}}}}}});
  nlohmann::json config = {
      {"seed", 7},
      {"rounds", 4},
      {"data", {{"dataset", "fashion-mnist"}, {"clients", 6}, {"partition", "iid"}}},
      {"model", {{"arch", "cnn"}}},
      {"strategy", {{"fraction_fit", 0.5}}}};
  config["simulation"] = {{"strategies", strategies}, {"seeds", {7, 8, 9}}};
  return config;
}

void expect_error(const nlohmann::json& config, const PlanFlags& flags, const std::string& text) {
  Result<SimulationPlan> plan = make_plan(config, flags);
  ASSERT_FALSE(plan.ok()) << config.dump();
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find(text), std::string::npos) << plan.status().message();
}

TEST(SimConfig, StrategiesSeedsAndRunConfigs) {
  Result<SimulationPlan> plan = make_plan(base(), {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  ASSERT_EQ(plan->strategies.size(), 3u);
  EXPECT_EQ(plan->strategies[0].label, "fedavg");
  EXPECT_EQ(plan->strategies[2].label, "fedavg-small-lr");
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{7, 8, 9}));
  EXPECT_EQ(plan->rounds, 4);
  EXPECT_EQ(plan->num_clients, 6);
  EXPECT_EQ(plan->num_runs(), 9);
  EXPECT_FALSE(plan->base_config.contains("simulation"));

  // The shared strategy options are merged under each entry; label and overrides are not passed.
  const nlohmann::json prox = run_config_for(*plan, plan->strategies[1], 8);
  EXPECT_EQ(prox["strategy"],
            nlohmann::json({{"fraction_fit", 0.5}, {"name", "fedprox"}, {"mu", 0.1}}));
  EXPECT_EQ(prox["seed"], 8);
  EXPECT_EQ(prox["rounds"], 4);
  EXPECT_FALSE(prox.contains("simulation"));
  // Simulation defaults for the federation: every client before a round, a long deadline.
  EXPECT_EQ(prox["federation"]["min_available_clients"], 6);
  EXPECT_GE(prox["federation"]["round_timeout_s"].get<double>(), 3600);
  // Overrides patch only their own run.
  const nlohmann::json small = run_config_for(*plan, plan->strategies[2], 7);
  EXPECT_EQ(small["local"]["lr"], 0.001);
  EXPECT_EQ(small["strategy"]["name"], "fedavg");
  EXPECT_FALSE(small["strategy"].contains("label"));
  EXPECT_FALSE(prox.contains("local"));
  EXPECT_EQ(run_dir_name(plan->strategies[2], 7), "fedavg-small-lr/seed-7");
}

TEST(SimConfig, ExplicitFederationSettingsWin) {
  nlohmann::json config = base();
  config["federation"] = {{"min_available_clients", 3}, {"client_timeout_s", 9}};
  Result<SimulationPlan> plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  const nlohmann::json run = run_config_for(*plan, plan->strategies[0], 7);
  EXPECT_EQ(run["federation"]["min_available_clients"], 3);
  EXPECT_EQ(run["federation"]["client_timeout_s"], 9);
}

TEST(SimConfig, FlagsSelectStrategiesSeedsRoundsAndWorkers) {
  PlanFlags flags;
  flags.strategies = {"fedprox", "fedavg"};  // a name matches every entry of that strategy
  flags.seeds = 2;
  flags.rounds = 11;
  flags.workers = 3;
  Result<SimulationPlan> plan = make_plan(base(), flags);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  ASSERT_EQ(plan->strategies.size(), 3u);
  EXPECT_EQ(plan->strategies[0].label, "fedprox");
  EXPECT_EQ(plan->strategies[1].label, "fedavg");
  EXPECT_EQ(plan->strategies[2].label, "fedavg-small-lr");
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{7, 8}));  // config.seed onwards
  EXPECT_EQ(plan->rounds, 11);
  EXPECT_EQ(plan->workers, 3);
  EXPECT_EQ(run_config_for(*plan, plan->strategies[0], 7)["rounds"], 11);

  flags = {};
  flags.strategies = {"fedavg-small-lr"};
  plan = make_plan(base(), flags);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->strategies.size(), 1u);
}

TEST(SimConfig, SingleStrategyConfigWithoutSimulationSection) {
  nlohmann::json config = base();
  config.erase("simulation");
  config["strategy"]["name"] = "fedavg";
  Result<SimulationPlan> plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  ASSERT_EQ(plan->strategies.size(), 1u);
  EXPECT_EQ(plan->strategies[0].label, "fedavg");
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{7}));
  EXPECT_EQ(plan->strategies[0].strategy["fraction_fit"], 0.5);
}

TEST(SimConfig, SeedCount) {
  nlohmann::json config = base();
  config["simulation"]["seeds"] = 2;
  Result<SimulationPlan> plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{7, 8}));
}

TEST(SimConfig, SeedsSpanTheWholeUint64Range) {
  nlohmann::json config = base();
  config["simulation"]["seeds"] = {uint64_t{18446744073709551615u}};
  Result<SimulationPlan> plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{18446744073709551615u}));
}

TEST(SimConfig, ErrorsNameThePathOrFlag) {
  nlohmann::json config = base();
  config["simulation"]["strategies"][1].erase("name");
  expect_error(config, {}, "config.simulation.strategies[1].name: missing required field");

  config = base();
  config["simulation"]["strategies"][2]["label"] = "fedavg";
  expect_error(config, {}, "label \"fedavg\" appears twice");

  config = base();
  config["simulation"]["strategies"][0]["label"] = "a/b";
  expect_error(config, {}, "config.simulation.strategies[0].label");

  config = base();
  config["simulation"]["seeds"] = {1, 1};
  expect_error(config, {}, "seed 1 appears twice");

  config = base();
  config["simulation"]["seeds"] = 0;
  expect_error(config, {}, "config.simulation.seeds");

  config = base();
  config["simulation"]["seeds"] = int64_t{1000000000000};  // a typo, not 10^12 runs
  expect_error(config, {}, "expected a count in [1, 1000]");

  config = base();
  config["simulation"]["seeds"] = {7, -1};
  expect_error(config, {}, "config.simulation.seeds[1]: expected a non-negative integer");

  config = base();
  config["simulation"]["bogus"] = 1;
  expect_error(config, {}, "config.simulation.bogus: unknown key");

  config = base();
  config["simulation"]["strategies"] = nlohmann::json::array();
  expect_error(config, {}, "config.simulation.strategies: expected a non-empty array");

  config = base();
  config["simulation"]["strategies"][0]["overrides"] = {{"data", {{"clients", 3}}}};
  expect_error(config, {}, "may not change data.clients");

  config = base();
  config["simulation"]["strategies"][0]["overrides"] = {{"seed", 3}};
  expect_error(config, {}, "overrides.seed: not allowed");

  config = base();
  config["rounds"] = 0;
  expect_error(config, {}, "config.rounds");

  config = base();
  config["data"]["clients"] = "six";
  expect_error(config, {}, "config.data.clients");

  config = base();
  config.erase("simulation");
  expect_error(config, {}, "no strategy");

  PlanFlags flags;
  flags.strategies = {"fedx"};
  expect_error(base(), flags,
               "--strategies: no strategy \"fedx\" in the config (it has fedavg, "
               "fedprox, fedavg-small-lr)");
}

// --set PATH=VALUE: parsed as JSON, else a string; applied at a dotted path.
nlohmann::json overridden(const nlohmann::json& config, const std::vector<std::string>& texts) {
  nlohmann::json copy = config;
  Status status = apply_overrides(texts, &copy);
  EXPECT_TRUE(status.ok()) << status.to_string();
  return copy;
}

void expect_override_error(const std::string& text, const std::string& message) {
  nlohmann::json config = base();
  Status status = apply_overrides({text}, &config);
  ASSERT_FALSE(status.ok()) << text;
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), message);
}

TEST(SimConfig, SetParsesValuesAsJsonElseAsStrings) {
  Result<ConfigOverride> number = parse_override("data.max_examples_per_class=20");
  ASSERT_TRUE(number.ok()) << number.status().to_string();
  EXPECT_EQ(number->path, (std::vector<std::string>{"data", "max_examples_per_class"}));
  EXPECT_TRUE(number->value.is_number_integer());
  EXPECT_EQ(number->value, 20);
  EXPECT_EQ(number->text, "data.max_examples_per_class=20");

  EXPECT_EQ(parse_override("data.root=/x/y")->value, "/x/y");  // not JSON: a string
  EXPECT_EQ(parse_override("model.arch=resnet8")->value, "resnet8");
  EXPECT_EQ(parse_override("data.root=")->value, "");   // empty: an empty string
  EXPECT_EQ(parse_override("name=\"7\"")->value, "7");  // a JSON string stays one
  EXPECT_EQ(parse_override("eval.every=1e1")->value, 10.0);
  EXPECT_EQ(parse_override("x=true")->value, true);
  EXPECT_EQ(parse_override("x=[0.5, 0.25]")->value, nlohmann::json({0.5, 0.25}));
  EXPECT_EQ(parse_override("x={\"a\": 1}")->value, nlohmann::json({{"a", 1}}));
  EXPECT_EQ(parse_override("a.b=c=d")->value, "c=d");  // the first '=' ends the path
  EXPECT_TRUE(parse_override("x=null")->value.is_null());
}

TEST(SimConfig, SetChangesNestedKeysBeforeThePlan) {
  const nlohmann::json config =
      overridden(base(), {"data.max_examples_per_class=20", "local.augment.crop_padding=4",
                          "data.root=/x/y", "simulation.seeds=1", "rounds=2",
                          "simulation.strategies.1.mu=0.5", "local.epochs=1", "local.epochs=3"});
  EXPECT_EQ(config["data"]["max_examples_per_class"], 20);
  EXPECT_EQ(config["data"]["root"], "/x/y");
  EXPECT_EQ(config["data"]["clients"], 6);                   // the rest of the section is kept
  EXPECT_EQ(config["local"]["augment"]["crop_padding"], 4);  // missing objects are created
  EXPECT_EQ(config["local"]["epochs"], 3);                   // the last one wins
  EXPECT_EQ(config["simulation"]["strategies"][1]["mu"], 0.5);

  Result<SimulationPlan> plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->seeds, (std::vector<uint64_t>{7}));
  EXPECT_EQ(plan->rounds, 2);
  const nlohmann::json run = run_config_for(*plan, plan->strategies[1], 7);
  EXPECT_EQ(run["data"]["max_examples_per_class"], 20);
  EXPECT_EQ(run["strategy"]["mu"], 0.5);

  // null removes a key, as in a merge patch.
  EXPECT_FALSE(
      overridden(base(), {"strategy.fraction_fit=null"})["strategy"].contains("fraction_fit"));
}

TEST(SimConfig, SetErrorsNameTheFlagAndThePath) {
  expect_override_error("data..x=1", "--set data..x: empty key");
  expect_override_error(".data=1", "--set .data: empty key");
  expect_override_error("data.=1", "--set data.: empty key");
  expect_override_error("=1", "--set =1: empty path");
  expect_override_error("data.root",
                        "--set data.root: expected PATH=VALUE (e.g. data.root=/data/cifar10)");
  expect_override_error("data.clients.x=1",
                        "--set data.clients.x: config.data.clients is a number, not an object");
  expect_override_error("simulation.strategies.7.mu=1",
                        "--set simulation.strategies.7.mu: config.simulation.strategies has 3 "
                        "entries (no index \"7\")");
  expect_override_error("simulation.strategies.first.mu=1",
                        "--set simulation.strategies.first.mu: config.simulation.strategies has "
                        "3 entries (no index \"first\")");
  expect_override_error("simulation.strategies.0=null",
                        "--set simulation.strategies.0: cannot remove an entry of the array "
                        "config.simulation.strategies[0]");

  nlohmann::json not_object = nlohmann::json::array();
  EXPECT_EQ(apply_overrides({"a=1"}, &not_object).message(),
            "--set a: the config is not a JSON object");
}

TEST(SimConfig, OverridesAreRecordedInTheReport) {
  ReportInfo info;
  info.config_path = "sim.json";
  info.config = overridden(base(), {"local.epochs=1", "data.root=/x y"});
  info.overrides = {"local.epochs=1", "data.root=/x y"};
  const nlohmann::json report = make_report(info, {});
  EXPECT_EQ(report["overrides"], nlohmann::json({"local.epochs=1", "data.root=/x y"}));
  EXPECT_NE(report_markdown(report).find(
                "Config overrides: `--set local.epochs=1` `--set data.root=/x y`."),
            std::string::npos)
      << report_markdown(report);

  info.overrides.clear();  // none: no key, no line
  EXPECT_FALSE(make_report(info, {}).contains("overrides"));
  EXPECT_EQ(report_markdown(make_report(info, {})).find("overrides"), std::string::npos);
}

TEST(SimConfig, SplitClientsEvenly) {
  using Ranges = std::vector<std::pair<int, int>>;
  EXPECT_EQ(split_clients(10, 3), (Ranges{{0, 3}, {4, 6}, {7, 9}}));
  EXPECT_EQ(split_clients(2, 5), (Ranges{{0, 0}, {1, 1}}));  // at most one worker per client
  EXPECT_EQ(split_clients(7, 1), (Ranges{{0, 6}}));
  EXPECT_EQ(split_clients(1000, 2), (Ranges{{0, 499}, {500, 999}}));
  EXPECT_TRUE(split_clients(0, 2).empty());
}

TEST(SimConfig, TargetAccuracyIsANonEmptyArrayOfFractions) {
  nlohmann::json config = base();
  config["simulation"]["target_accuracy"] = {0.5, 0.725};
  EXPECT_TRUE(make_plan(config, {}).ok()) << make_plan(config, {}).status().to_string();
  config["simulation"]["target_accuracy"] = {0.5, 75};
  expect_error(config, {},
               "config.simulation.target_accuracy[1]: must be an accuracy in (0, 1), a fraction "
               "(got 75.0)");
  config["simulation"]["target_accuracy"] = {0.0};
  expect_error(config, {}, "config.simulation.target_accuracy[0]: must be an accuracy in (0, 1)");
  config["simulation"]["target_accuracy"] = nlohmann::json::array();
  expect_error(config, {}, "config.simulation.target_accuracy: expected a non-empty array");
  config["simulation"]["target_accuracy"] = 0.5;
  expect_error(config, {}, "config.simulation.target_accuracy: expected an array of numbers");
}

TEST(SimConfig, DevicesReachEveryRunConfigWithAbsoluteTracePaths) {
  nlohmann::json config = base();
  config["simulation"]["devices"] = {{"trace", "../traces/devices.csv"},
                                     {"availability", {{"trace", "availability.csv"}}}};
  config["simulation"]["strategies"][1]["overrides"] = {{"devices", {{"deadline_s", 60}}}};
  config["simulation"]["strategies"][2]["overrides"]["devices"] = {
      {"availability", {{"trace", "other/off.csv"}}}};
  PlanFlags flags;
  flags.config_dir = "/sims/configs/";
  Result<SimulationPlan> plan = make_plan(config, flags);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->config_dir, "/sims/configs");

  const nlohmann::json run = run_config_for(*plan, plan->strategies[0], 7);
  EXPECT_FALSE(run.contains("simulation"));
  ASSERT_TRUE(run.contains("devices"));
  EXPECT_EQ(run["devices"]["trace"], "/sims/traces/devices.csv");
  EXPECT_EQ(run["devices"]["availability"]["trace"], "/sims/configs/availability.csv");
  // What the coordinator makes of it.
  Result<coordinator::CoordinatorOptions> options = coordinator::parse_coordinator_options(run);
  ASSERT_TRUE(options.ok()) << options.status().to_string();
  EXPECT_TRUE(options->devices.enabled);
  EXPECT_EQ(options->devices.trace, "/sims/traces/devices.csv");
  EXPECT_EQ(options->devices.availability, coordinator::DeviceOptions::Availability::kTrace);

  // An entry's overrides patch the devices of its own runs; their trace paths resolve alike.
  const nlohmann::json deadline = run_config_for(*plan, plan->strategies[1], 8);
  EXPECT_EQ(deadline["devices"]["deadline_s"], 60);
  EXPECT_EQ(deadline["devices"]["trace"], "/sims/traces/devices.csv");
  EXPECT_FALSE(run["devices"].contains("deadline_s"));
  const nlohmann::json other = run_config_for(*plan, plan->strategies[2], 9);
  EXPECT_EQ(other["devices"]["availability"]["trace"], "/sims/configs/other/off.csv");

  // Absolute paths stay; without a config directory, paths are relative to the current one.
  config["simulation"]["devices"]["trace"] = "/data/devices.csv";
  config["simulation"]["strategies"][2].erase("overrides");
  plan = make_plan(config, {});
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->config_dir, std::filesystem::current_path().string());
  const nlohmann::json here = run_config_for(*plan, plan->strategies[0], 7);
  EXPECT_EQ(here["devices"]["trace"], "/data/devices.csv");
  EXPECT_EQ(here["devices"]["availability"]["trace"],
            (std::filesystem::current_path() / "availability.csv").string());

  // No devices: none in the runs.
  plan = make_plan(base(), {});
  ASSERT_TRUE(plan.ok());
  EXPECT_FALSE(run_config_for(*plan, plan->strategies[0], 7).contains("devices"));
}

TEST(SimConfig, DeviceErrorsNameSimulationDevices) {
  nlohmann::json config = base();
  config["simulation"]["devices"] = {
      {"slowdown", {{"distribution", "lognormal"}, {"median", 2}, {"sigma", -1}}}};
  expect_error(config, {}, "config.simulation.devices.slowdown.sigma: must be >= 0 (got -1)");
  config["simulation"]["devices"] = {{"trace", "d.csv"}, {"bandwidth_mbps", 10}};
  expect_error(config, {}, "config.simulation.devices.bandwidth_mbps: not with \"trace\"");
  config["simulation"]["devices"] = {{"compute", "modeled"}};
  expect_error(config, {}, "config.simulation.devices.seconds_per_example: must be > 0");
  config["simulation"]["devices"] = "mobile";
  expect_error(config, {}, "config.simulation.devices: expected an object");
  config["simulation"].erase("devices");
  config["devices"] = {{"slowdown", 2}};
  expect_error(config, {},
               "config.devices: a simulation's devices go in config.simulation.devices");
}

}  // namespace
}  // namespace fedtail::simulation
