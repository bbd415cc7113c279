// The check of a simulation config without running it: what every run of the plan would refuse at
// start, found once and before anything starts (fedtail-sim --check, and the pre-flight of
// Simulation::create).
//
// For every strategy entry of the plan (make_plan, the command line applied), with the plan's
// first seed:
//   1. its run config and coordinator options (as make_plan checks them), and the traces of its
//      simulated devices (config.simulation.devices: read as the coordinator reads them);
//   2. the strategy's factories, server and client (strategies/registry.h: its options);
//   3. the model options, sized from the built data set as the coordinator sizes them, else from
//      what the dataset's name tells (data_presence.h, known_shape), then validate_model_options;
//   4. optionally ServerStrategy::initialize with the RunContext the round engine gives it (CPU,
//      the class counts and auxiliary set of the built data), where strategies refuse
//      combinations (FedRoD, FedLoGe, FedProto refuse a local.loss other than "ce"; a model with
//      groups is refused by strategies with one global model).
// For every distinct data section (the entries' config.data after their overrides): its presence
// (check_data_present: no file read), and optionally the data set itself, built once as a run
// builds it (build_federated_data with the first seed), which finds what only the data shows
// (data.validation_per_class above a class's size, a partition that cannot give every client
// data.min_client_size examples).
//
// Not covered: the other seeds' partitions, the device, the fedtail-client binary, the output
// directory, and whatever happens during rounds (memory, time, a client's fit failing).
// Free functions. They use the strategy registry (thread-safe) and LibTorch; the report is a value.
#ifndef FEDTAIL_SIMULATIONS_CONFIG_CHECK_H_
#define FEDTAIL_SIMULATIONS_CONFIG_CHECK_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "simulations/sim_config.h"

namespace fedtail::simulation {

struct CheckOptions {
  // Build each distinct data section's data set once, when present (seconds; image folders are
  // decoded the first time). false: presence only, and the model is sized from the dataset's name.
  bool build_data = true;
  // Call each entry's ServerStrategy::initialize (builds its initial model: up to a second for a
  // ResNet-34). Without the built data it runs on the dataset's known classes and image shape
  // with no class counts, and not at all when the shape is unknown (dataset "folder") or the run
  // needs the auxiliary set (data.auxiliary_per_class > 0).
  bool initialize = true;
};

// One distinct data section, and what was found of its data set.
struct DataSectionCheck {
  std::string dataset;              // its "dataset"
  std::vector<std::string> labels;  // the strategy entries that use it, in plan order
  bool overridden = false;          // differs from config.data (entries' overrides)
  Status presence;                  // OK, or why the data set is absent (names config.data.*)
  bool built = false;               // the data set was built
  Status build;                     // why building it failed; OK when built or not tried
  std::string description;          // when built: classes, image shape, examples, seconds

  bool ok() const { return presence.ok() && build.ok(); }
};

// One strategy entry of the plan.
struct EntryCheck {
  std::string label;            // its label
  std::string strategy;         // its registered name
  std::string model;            // config.model.arch, or the groups "cnn/resnet8"
  int data_section = -1;        // index into CheckReport::data; -1 when its run config failed
  bool with_data = false;       // the model was sized from the built data set
  bool initialized = false;     // ServerStrategy::initialize accepted the run
  std::string not_initialized;  // why initialize was not called ("" when it was, or not asked)
  Status status;                // the first failure (naming the key or flag); OK when none

  bool ok() const { return status.ok(); }
};

struct CheckReport {
  int rounds = 0;       // rounds of every run
  int num_clients = 0;  // config.data.clients
  int num_seeds = 0;    // seeds per strategy
  std::vector<DataSectionCheck> data;
  std::vector<EntryCheck> entries;  // in plan order

  int failed_entries() const;
  int failed_data() const;
  // Every entry and every data section passed: the simulation can start here.
  bool ok() const { return failed_entries() == 0 && failed_data() == 0; }
};

// Checks every entry and every distinct data section of `plan` (see the file comment); each
// failure is recorded in the report, none is returned. Blocks while it builds data sets and
// initializes strategies. The strategy registry must hold the plan's strategies (builtins and
// loaded plugins).
CheckReport check_plan(const SimulationPlan& plan, const CheckOptions& options);

// make_plan(config, flags), then check_plan. Returns make_plan's error (kInvalidArgument naming
// the JSON path or the flag) when there is no plan.
Result<CheckReport> check_simulation(const nlohmann::json& config, const PlanFlags& flags,
                                     const CheckOptions& options);

// fedtail-sim --check's output, one line each: the data sections ("data  ok|absent|FAIL
// config.data (...): ..."; absent sections with the same reason, e.g. one missing root, share a
// line), the entries ("ok    <label>  (<strategy>, <model>, N rounds, C
// clients, ...)" or "FAIL  <label>: <reason>"), and a summary ("check passed: ..." or "check
// failed: ...").
std::string format_check_report(const CheckReport& report);

// OK when report.ok(); otherwise kFailedPrecondition whose message is the first problem (data
// sections first, as format_check_report groups them, then entries; each names the key) and how
// many more there are: "config.data.root: /d is not a directory (the data of every strategy);
// and 2 more problems (fedtail-sim --check CONFIG lists them)".
Status check_status(const CheckReport& report);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_CONFIG_CHECK_H_
