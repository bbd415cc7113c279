#include "simulations/sim_config.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>

#include "common/base/json_reader.h"
#include "common/learning/config_sections.h"
#include "common/learning/run_config.h"
#include "coordinator/device_model.h"
#include "coordinator/options.h"

namespace fedtail::simulation {
namespace {

// More seeds than this in one simulation is a typo (each is a whole run per strategy).
constexpr int64_t kMaxSeeds = 1000;

// Federation defaults of a simulation (see the header).
constexpr double kSimRoundTimeoutS = 86400;
constexpr int kSimPollTimeoutMs = 5000;
constexpr int kSimHeartbeatMs = 2000;
constexpr double kSimClientTimeoutS = 30;

bool valid_label(const std::string& label) {
  if (label.empty() || label.size() > 64 || label[0] == '.') return false;
  return std::all_of(label.begin(), label.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

// Reads config.simulation.strategies[i].
Result<StrategyEntry> parse_entry(const nlohmann::json& base_strategy, const nlohmann::json& json,
                                  const std::string& path) {
  if (!json.is_object()) return Status::InvalidArgument(path + ": expected an object");
  StrategyEntry entry;
  JsonReader reader(json, path);
  std::string name;
  reader.read_required("name", &name);
  entry.label = name;
  reader.read("label", &entry.label);
  nlohmann::json overrides;
  reader.read_raw("overrides", &overrides);
  for (const auto& [key, value] : json.items()) reader.ignore(key);  // the strategy's own options
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  if (!valid_label(entry.label)) {
    return Status::InvalidArgument(path + ".label: use letters, digits, '.', '_' and '-' (got \"" +
                                   entry.label + "\")");
  }
  if (!overrides.is_null() && !overrides.is_object()) {
    return Status::InvalidArgument(path + ".overrides: expected an object (a merge patch)");
  }
  if (overrides.is_object()) {
    for (const char* key : {"simulation", "seed", "rounds", "strategy"}) {
      if (overrides.contains(key)) {
        return Status::InvalidArgument(path + ".overrides." + key +
                                       ": not allowed here (set it in the entry or the config)");
      }
    }
    entry.overrides = overrides;
  }
  entry.strategy = base_strategy.is_object() ? base_strategy : nlohmann::json::object();
  nlohmann::json own = json;
  own.erase("label");
  own.erase("overrides");
  entry.strategy.merge_patch(own);
  return entry;
}

// Sets `key` of `object` to `value` unless present.
void set_default(nlohmann::json& object, const char* key, const nlohmann::json& value) {
  if (!object.contains(key) || object[key].is_null()) object[key] = value;
}

// The array index `key` names, or -1 when it is not a plain decimal number.
int64_t array_index(const std::string& key) {
  if (key.empty() || key.size() > 9) return -1;
  if (!std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  return std::stoll(key);
}

// "a string", "an array", ...: the JSON type of `value` in a sentence.
std::string a_type(const nlohmann::json& value) {
  if (value.is_null()) return "null";
  const std::string type = value.type_name();
  return (value.is_array() || value.is_object() ? "an " : "a ") + type;
}

// Makes the relative trace paths of a "devices" section absolute against `dir` (absolute); values
// that are not strings are left for parse_device_options to refuse.
void absolute_device_paths(const std::string& dir, nlohmann::json* devices) {
  if (!devices->is_object()) return;
  auto absolute = [&dir](nlohmann::json* path) {
    if (!path->is_string()) return;
    const std::string text = path->get<std::string>();
    if (text.empty() || std::filesystem::path(text).is_absolute()) return;
    *path = (std::filesystem::path(dir) / text).lexically_normal().string();
  };
  if (devices->contains("trace")) absolute(&(*devices)["trace"]);
  if (devices->contains("availability") && (*devices)["availability"].is_object() &&
      (*devices)["availability"].contains("trace")) {
    absolute(&(*devices)["availability"]["trace"]);
  }
}

// `dir` made absolute and normal ("" = the current directory), without a trailing separator.
Result<std::string> absolute_dir(const std::string& dir) {
  std::error_code error;
  const std::filesystem::path path =
      std::filesystem::absolute(std::filesystem::path(dir.empty() ? "." : dir), error);
  if (error) {
    return Status::IOError("the config's directory \"" + dir + "\": " + error.message());
  }
  std::string text = path.lexically_normal().string();
  if (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

}  // namespace

Result<ConfigOverride> parse_override(const std::string& text) {
  const size_t equals = text.find('=');
  if (equals == std::string::npos) {
    return Status::InvalidArgument("--set " + text +
                                   ": expected PATH=VALUE (e.g. data.root=/data/cifar10)");
  }
  ConfigOverride change;
  change.text = text;
  const std::string path = text.substr(0, equals);
  if (path.empty()) return Status::InvalidArgument("--set " + text + ": empty path");
  for (size_t begin = 0;;) {
    const size_t dot = std::min(path.find('.', begin), path.size());
    if (dot == begin) return Status::InvalidArgument("--set " + path + ": empty key");
    change.path.push_back(path.substr(begin, dot - begin));
    if (dot == path.size()) break;
    begin = dot + 1;
  }
  // Not JSON: the text itself ("/data/cifar10", "resnet8"). A number beyond a double's range
  // is not valid JSON either, and stays a string that the config's reader refuses.
  const std::string value = text.substr(equals + 1);
  Result<nlohmann::json> parsed = parse_json_text(value);
  change.value = parsed.ok() ? std::move(parsed).value() : nlohmann::json(value);
  return change;
}

Status apply_override(const ConfigOverride& change, nlohmann::json* config) {
  const std::string flag = "--set " + change.text.substr(0, change.text.find('='));
  if (change.path.empty()) return Status::InvalidArgument(flag + ": empty path");
  if (!config->is_object()) {
    return Status::InvalidArgument(flag + ": the config is not a JSON object");
  }
  nlohmann::json* node = config;
  std::string where = "config";
  for (size_t i = 0; i < change.path.size(); ++i) {
    const std::string& key = change.path[i];
    const bool last = i + 1 == change.path.size();
    if (node->is_array()) {
      const int64_t index = array_index(key);
      if (index < 0 || index >= static_cast<int64_t>(node->size())) {
        return Status::InvalidArgument(flag + ": " + where + " has " +
                                       std::to_string(node->size()) + " entries (no index \"" +
                                       key + "\")");
      }
      where += "[" + key + "]";
      if (last && change.value.is_null()) {
        return Status::InvalidArgument(flag + ": cannot remove an entry of the array " + where);
      }
      node = &(*node)[static_cast<size_t>(index)];
    } else {
      if (!node->is_object()) {
        return Status::InvalidArgument(flag + ": " + where + " is " + a_type(*node) +
                                       ", not an object");
      }
      where += "." + key;
      if (last && change.value.is_null()) {
        node->erase(key);
        return Status::OK();
      }
      if (!last && (!node->contains(key) || (*node)[key].is_null())) {
        (*node)[key] = nlohmann::json::object();
      }
      node = &(*node)[key];
    }
    if (last) *node = change.value;
  }
  return Status::OK();
}

Status apply_overrides(const std::vector<std::string>& texts, nlohmann::json* config) {
  for (const std::string& text : texts) {
    FEDTAIL_ASSIGN_OR_RETURN(ConfigOverride change, parse_override(text));
    FEDTAIL_RETURN_IF_ERROR(apply_override(change, config));
  }
  return Status::OK();
}

nlohmann::json run_config_for(const SimulationPlan& plan, const StrategyEntry& entry,
                              uint64_t seed) {
  nlohmann::json config = plan.base_config;
  config.merge_patch(entry.overrides);
  if (config.contains("devices")) absolute_device_paths(plan.config_dir, &config["devices"]);
  config["strategy"] = entry.strategy;
  config["seed"] = seed;
  config["rounds"] = plan.rounds;
  nlohmann::json& federation = config["federation"];
  if (!federation.is_object()) federation = nlohmann::json::object();
  set_default(federation, "min_available_clients", plan.num_clients);
  set_default(federation, "round_timeout_s", kSimRoundTimeoutS);
  set_default(federation, "poll_timeout_ms", kSimPollTimeoutMs);
  set_default(federation, "heartbeat_interval_ms", kSimHeartbeatMs);
  set_default(federation, "client_timeout_s", kSimClientTimeoutS);
  return config;
}

std::string run_dir_name(const StrategyEntry& entry, uint64_t seed) {
  return entry.label + "/seed-" + std::to_string(seed);
}

Result<SimulationPlan> make_plan(const nlohmann::json& config, const PlanFlags& flags) {
  if (!config.is_object()) return Status::InvalidArgument("config: expected a JSON object");
  SimulationPlan plan;
  plan.base_config = config;
  plan.base_config.erase("simulation");
  const nlohmann::json simulation =
      config.contains("simulation") ? config["simulation"] : nlohmann::json::object();
  const nlohmann::json base_strategy =
      config.contains("strategy") ? config["strategy"] : nlohmann::json::object();
  if (!base_strategy.is_object()) {
    return Status::InvalidArgument("config.strategy: expected an object");
  }

  // The strategies.
  JsonReader reader(simulation, "config.simulation");
  nlohmann::json entries;
  reader.read_raw("strategies", &entries);
  nlohmann::json seeds;
  reader.read_raw("seeds", &seeds);
  reader.read("workers", &plan.workers);
  reader.check(plan.workers >= 0, "workers", "must be >= 0 (0 = one per core, or per GPU)");
  // The report's time-to-accuracy targets (simulations/report_time.h reads them from the config).
  std::vector<double> target_accuracy;
  reader.read("target_accuracy", &target_accuracy);
  reader.check(!reader.has("target_accuracy") || !target_accuracy.empty(), "target_accuracy",
               "expected a non-empty array of accuracies in (0, 1)");
  for (size_t i = 0; i < target_accuracy.size(); ++i) {
    reader.check(target_accuracy[i] > 0 && target_accuracy[i] < 1,
                 "target_accuracy[" + std::to_string(i) + "]",
                 "must be an accuracy in (0, 1), a fraction (got " +
                     nlohmann::json(target_accuracy[i]).dump() + ")");
  }
  nlohmann::json devices;
  reader.read_raw("devices", &devices);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());

  // The simulated devices: every run's "devices", its trace paths absolute (the runs read their
  // config elsewhere). The traces themselves are read by the check (config_check.h).
  if (config.contains("devices")) {
    return Status::InvalidArgument(
        "config.devices: a simulation's devices go in config.simulation.devices");
  }
  FEDTAIL_ASSIGN_OR_RETURN(plan.config_dir, absolute_dir(flags.config_dir));
  if (!devices.is_null()) {
    FEDTAIL_RETURN_IF_ERROR(
        coordinator::parse_device_options(devices, "config.simulation.devices", plan.config_dir)
            .status());
    absolute_device_paths(plan.config_dir, &devices);
    plan.base_config["devices"] = std::move(devices);
  }
  if (entries.is_null()) {
    if (!base_strategy.contains("name")) {
      return Status::InvalidArgument(
          "config: no strategy: give config.strategy.name or config.simulation.strategies");
    }
    nlohmann::json single = base_strategy;
    FEDTAIL_ASSIGN_OR_RETURN(StrategyEntry entry,
                             parse_entry(nlohmann::json::object(), single, "config.strategy"));
    plan.strategies.push_back(std::move(entry));
  } else {
    if (!entries.is_array() || entries.empty()) {
      return Status::InvalidArgument(
          "config.simulation.strategies: expected a non-empty array of strategy objects");
    }
    nlohmann::json shared = base_strategy;
    shared.erase("name");
    for (size_t i = 0; i < entries.size(); ++i) {
      FEDTAIL_ASSIGN_OR_RETURN(StrategyEntry entry, parse_entry(shared, entries[i],
                                                                "config.simulation.strategies[" +
                                                                    std::to_string(i) + "]"));
      plan.strategies.push_back(std::move(entry));
    }
  }
  std::set<std::string> labels;
  for (const StrategyEntry& entry : plan.strategies) {
    if (!labels.insert(entry.label).second) {
      return Status::InvalidArgument("config.simulation.strategies: label \"" + entry.label +
                                     "\" appears twice (give each entry its own \"label\")");
    }
  }
  if (!flags.strategies.empty()) {
    std::vector<StrategyEntry> kept;
    for (const std::string& wanted : flags.strategies) {
      bool found = false;
      for (const StrategyEntry& entry : plan.strategies) {
        if (entry.label == wanted || entry.strategy.value("name", "") == wanted) {
          found = true;
          bool already = std::any_of(kept.begin(), kept.end(), [&](const StrategyEntry& k) {
            return k.label == entry.label;
          });
          if (!already) kept.push_back(entry);
        }
      }
      if (!found) {
        std::string have;
        for (const StrategyEntry& entry : plan.strategies) {
          have += (have.empty() ? "" : ", ") + entry.label;
        }
        return Status::InvalidArgument("--strategies: no strategy \"" + wanted +
                                       "\" in the config (it has " + have + ")");
      }
    }
    plan.strategies = std::move(kept);
  }

  // The base config (its seed and data) as the coordinator will read it.
  nlohmann::json probe = plan.base_config;
  probe["strategy"] = plan.strategies.front().strategy;
  Result<RunConfig> run = parse_run_config(probe, coordinator_config_sections());
  if (!run.ok()) return run.status();
  if (flags.rounds > 0) {
    plan.rounds = flags.rounds;
  } else if (!probe.contains("rounds")) {
    return Status::InvalidArgument("config.rounds: missing required field (or give --rounds)");
  } else if (!probe["rounds"].is_number_integer()) {
    return Status::InvalidArgument("config.rounds: expected an integer (got " +
                                   probe["rounds"].dump() + ")");
  } else {
    plan.rounds = probe["rounds"].get<int>();  // checked (>= 1) with every run's config below
  }
  plan.num_clients = run->data.clients;

  // The seeds.
  if (flags.seeds > 0) {
    for (int i = 0; i < flags.seeds; ++i) plan.seeds.push_back(run->seed + i);
  } else if (seeds.is_null()) {
    plan.seeds.push_back(run->seed);
  } else if (seeds.is_number_integer() && seeds.get<int64_t>() >= 1 &&
             seeds.get<int64_t>() <= kMaxSeeds) {
    for (int64_t i = 0; i < seeds.get<int64_t>(); ++i) plan.seeds.push_back(run->seed + i);
  } else if (seeds.is_array() && !seeds.empty()) {
    std::set<uint64_t> seen;
    for (size_t i = 0; i < seeds.size(); ++i) {
      // Parsed non-negative integers are unsigned (the whole uint64 range is a seed); ones built
      // in code may be signed.
      const bool non_negative = seeds[i].is_number_unsigned() ||
                                (seeds[i].is_number_integer() && seeds[i].get<int64_t>() >= 0);
      if (!non_negative) {
        return Status::InvalidArgument("config.simulation.seeds[" + std::to_string(i) +
                                       "]: expected a non-negative integer (got " +
                                       seeds[i].dump() + ")");
      }
      if (!seen.insert(seeds[i].get<uint64_t>()).second) {
        return Status::InvalidArgument("config.simulation.seeds: seed " + seeds[i].dump() +
                                       " appears twice");
      }
      plan.seeds.push_back(seeds[i].get<uint64_t>());
    }
  } else {
    return Status::InvalidArgument("config.simulation.seeds: expected a count in [1, " +
                                   std::to_string(kMaxSeeds) +
                                   "] or a non-empty array of seeds (got " + seeds.dump() + ")");
  }
  if (flags.workers > 0) plan.workers = flags.workers;

  // Every run's config, checked now.
  for (const StrategyEntry& entry : plan.strategies) {
    const nlohmann::json config_of_run = run_config_for(plan, entry, plan.seeds.front());
    const std::string where = "strategy \"" + entry.label + "\"";
    Result<RunConfig> parsed = parse_run_config(config_of_run, coordinator_config_sections());
    if (!parsed.ok()) return parsed.status().with_context(where);
    Result<coordinator::CoordinatorOptions> options =
        coordinator::parse_coordinator_options(config_of_run);
    if (!options.ok()) return options.status().with_context(where);
    if (parsed->data.clients != plan.num_clients) {
      return Status::InvalidArgument(where +
                                     ": overrides may not change data.clients (the strategies "
                                     "of one simulation share one partition)");
    }
  }
  return plan;
}

}  // namespace fedtail::simulation
