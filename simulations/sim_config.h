// The simulation plan: which runs a fedtail-sim config asks for, and the run config of each.
//
// A simulation config is a run config (common/learning/run_config.h, coordinator/options.h) with an
// optional "simulation" section:
//
//   "strategy": {"fraction_fit": 0.2},          // options every strategy shares (no "name" needed)
//   "simulation": {
//     "strategies": [                            // default: the single config.strategy
//       {"name": "fedavg"},
//       {"name": "fedloge", "label": "fedloge-dense", "sparsity": 0,
//        "overrides": {"local": {"batch_size": 8}}}],  // merge patch on this run's config
//     "seeds": [1, 2, 3],                        // or a count N: seed .. seed + N - 1
//     "workers": 0,                              // worker processes; 0 = auto (cores or GPUs)
//     "target_accuracy": [0.5, 0.7],             // time-to-accuracy targets of the report, with
//                                                //   simulated devices (default: report_time.h)
//     "devices": {"trace": "devices.csv"}        // simulated devices and clock (optional;
//                                                //   coordinator/device_model.h)
//   }
//
// Each (strategy, seed) is one run: the config without "simulation", patched with the entry's
// overrides, its "strategy" = config.strategy merged with the entry (minus "label" and
// "overrides"), "seed" = the seed. Federation settings a simulation needs get defaults unless the
// config sets them: every client connected before a round (min_available_clients = data.clients,
// so that client sampling does not depend on start-up timing), a one-day round deadline (a slow
// worker is not a failed one), short polls and a 30 s silence limit (a dead worker is noticed).
// simulation.devices becomes every run's top-level "devices" (where the coordinator reads it; a
// simulation config may not set "devices" itself), with its relative trace paths ("trace",
// "availability.trace") made absolute against the config file's directory (PlanFlags::config_dir);
// an entry's overrides may patch it (e.g. {"devices": {"deadline_s": 60}}).
// Plain value types and free functions; thread-safe.
#ifndef FEDTAIL_SIMULATIONS_SIM_CONFIG_H_
#define FEDTAIL_SIMULATIONS_SIM_CONFIG_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::simulation {

// One strategy of the comparison.
struct StrategyEntry {
  std::string label;                                    // its name in tables and directories
  nlohmann::json strategy = nlohmann::json::object();   // the run's config.strategy (with "name")
  nlohmann::json overrides = nlohmann::json::object();  // merge patch on the run config
};

// What the command line changes in a plan (0 / empty = keep the config's).
struct PlanFlags {
  int rounds = 0;                       // --rounds
  std::vector<std::string> strategies;  // --strategies: labels or names to keep, in this order
  int seeds = 0;                        // --seeds N: config.seed .. config.seed + N - 1
  int workers = 0;                      // --workers
  // The config file's directory (fedtail-sim's CONFIG): relative trace paths of
  // simulation.devices resolve against it. "" = the current directory.
  std::string config_dir;
};

// One --set PATH=VALUE: a key of the config replaced before anything reads the config.
struct ConfigOverride {
  std::string text;               // as given: "PATH=VALUE"
  std::vector<std::string> path;  // PATH's keys; under an array a key is an index ("strategies.1")
  nlohmann::json value;           // VALUE as JSON, else the text itself; null removes the key
};

// Parses one --set argument "PATH=VALUE". PATH is dotted ("data.root", "local.epochs",
// "simulation.strategies.1.mu"); VALUE is parsed as JSON ("20", "[0.5]", "true", "\"7\"") and
// is the text itself, a string, when it is not valid JSON ("/data/cifar10", "resnet8"). Returns
// kInvalidArgument naming the flag and the path: "--set data..x: empty key", "--set data.root:
// expected PATH=VALUE (e.g. data.root=/data/cifar10)".
Result<ConfigOverride> parse_override(const std::string& text);

// Sets the value at `change.path` in *config (a JSON object; not null), creating the objects
// missing on the way; a null value removes the key. kInvalidArgument naming the flag and the
// JSON path when the way is blocked: "--set data.root.x: config.data.root is a string, not an
// object", "--set simulation.strategies.4.mu: config.simulation.strategies has 2 entries".
Status apply_override(const ConfigOverride& change, nlohmann::json* config);

// parse_override + apply_override for each of `texts`, in order (a later one wins); stops at the
// first error.
Status apply_overrides(const std::vector<std::string>& texts, nlohmann::json* config);

struct SimulationPlan {
  nlohmann::json base_config = nlohmann::json::object();  // the config without "simulation"
  std::vector<StrategyEntry> strategies;                  // at least one
  std::vector<uint64_t> seeds;                            // at least one, distinct
  int workers = 0;                                        // 0 = auto
  int rounds = 0;                                         // rounds of every run
  int num_clients = 0;                                    // config.data.clients
  std::string config_dir;  // absolute: where the devices' relative trace paths resolve

  int num_runs() const { return static_cast<int>(strategies.size() * seeds.size()); }
};

// Builds the plan of `config` (the parsed file; errors name JSON paths under "config.") with
// `flags` applied, and checks every run's config (run config, coordinator options, strategy
// entry, simulation.devices without reading its traces: config_check.h reads them) so that a
// mistake is reported before anything starts. kInvalidArgument otherwise, e.g.
// "config.simulation.strategies[1].name: missing required field", "--strategies: no strategy
// \"fedx\" in the config (it has fedavg, fedloge)", "config.simulation.devices.slowdown.sigma:
// must be >= 0 (got -1)".
Result<SimulationPlan> make_plan(const nlohmann::json& config, const PlanFlags& flags);

// The run config of `entry` with `seed` (see the file comment).
nlohmann::json run_config_for(const SimulationPlan& plan, const StrategyEntry& entry,
                              uint64_t seed);

// The run's directory name under DIR/runs: "<label>/seed-<seed>".
std::string run_dir_name(const StrategyEntry& entry, uint64_t seed);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_SIM_CONFIG_H_
