#include "simulations/config_check.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include "common/base/rng.h"
#include "common/data/federated_data.h"
#include "common/learning/config_sections.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/run_config.h"
#include "coordinator/device_model.h"
#include "coordinator/options.h"
#include "simulations/data_presence.h"
#include "strategies/registry.h"
#include "strategies/strategy.h"

namespace fedtail::simulation {
namespace {

// The run config keys the coordinator owns (coordinator/options.h).
const std::vector<std::string>& kCoordinatorKeys = coordinator_config_sections();

// What an entry's checks without data leave for the checks with it.
struct Pending {
  bool parsed = false;  // `run` holds the entry's run config
  RunConfig run;
  coordinator::CoordinatorOptions coordinator;
  std::unique_ptr<strategies::ServerStrategy> server;
};

// Names `status` in the config: model and data messages say "model.x: ..." / "data.x: ...", which
// become "config.model.x: ..."; any other message gets "config.<section>: " in front.
Status in_config(const Status& status, const std::string& section) {
  if (status.ok()) return status;
  const std::string& message = status.message();
  if (message.rfind(section + ".", 0) == 0 || message.rfind(section + ":", 0) == 0) {
    return Status(status.code(), "config." + message);
  }
  return status.with_context("config." + section);
}

std::string model_name(const ModelOptions& model) {
  if (model.groups.empty()) return model.arch;
  std::string name;
  for (const std::string& arch : model.groups) name += (name.empty() ? "" : "/") + arch;
  return name;
}

// Sets the model's input shape and classes from what the dataset's name tells, where the config
// leaves them 0; kInvalidArgument naming the field when the config says otherwise.
Status fill_from_known_shape(const std::string& dataset, ModelOptions* model) {
  const KnownShape shape = known_shape(dataset);
  const struct {
    const char* name;
    int known;
    int* field;
  } fields[] = {{"in_channels", shape.in_channels, &model->in_channels},
                {"image_size", shape.image_size, &model->image_size},
                {"num_classes", shape.num_classes, &model->num_classes}};
  for (const auto& f : fields) {
    if (f.known == 0) continue;
    if (*f.field == 0) {
      *f.field = f.known;
    } else if (*f.field != f.known) {
      return Status::InvalidArgument("config.model." + std::string(f.name) + ": the config says " +
                                     std::to_string(*f.field) + " but " + dataset + " has " +
                                     std::to_string(f.known));
    }
  }
  return Status::OK();
}

// Runs `check`, turning an exception that escaped a library edge into kInternal naming `what`.
template <typename F>
Status guarded(const std::string& what, F&& check) {
  try {
    return check();
  } catch (const std::exception& e) {
    return Status::Internal(what + " threw: " + e.what());
  } catch (...) {
    return Status::Internal(what + " threw a non-standard exception");
  }
}

// The traces of the run's simulated devices, read as its coordinator will read them. Errors name
// config.simulation.devices (make_plan copies it into every run's "devices", the paths absolute).
Status check_device_traces(const coordinator::DeviceOptions& devices, uint64_t seed) {
  using coordinator::DeviceModel;
  using coordinator::DeviceOptions;
  if (!devices.enabled) return Status::OK();
  DeviceOptions device_trace = devices;  // without the availability trace
  device_trace.availability = DeviceOptions::Availability::kAlways;
  Result<std::unique_ptr<DeviceModel>> with_devices = DeviceModel::create(device_trace, seed);
  if (!with_devices.ok()) {
    return with_devices.status().with_context("config.simulation.devices.trace");
  }
  DeviceOptions availability_trace = devices;  // without the device trace
  availability_trace.trace.clear();
  Result<std::unique_ptr<DeviceModel>> with_availability =
      DeviceModel::create(availability_trace, seed);
  if (!with_availability.ok()) {
    return with_availability.status().with_context("config.simulation.devices.availability.trace");
  }
  return Status::OK();
}

// Steps 1 and 2 of the header's list for one entry. Fills *pending; the first failure otherwise.
Status check_without_data(const SimulationPlan& plan, const StrategyEntry& entry, uint64_t seed,
                          EntryCheck* out, Pending* pending) {
  const nlohmann::json config = run_config_for(plan, entry, seed);
  FEDTAIL_ASSIGN_OR_RETURN(pending->run, parse_run_config(config, kCoordinatorKeys));
  pending->parsed = true;
  out->model = model_name(pending->run.model);
  FEDTAIL_ASSIGN_OR_RETURN(pending->coordinator, coordinator::parse_coordinator_options(config));
  FEDTAIL_RETURN_IF_ERROR(check_device_traces(pending->coordinator.devices, seed));
  const std::string& name = pending->coordinator.strategy_name;
  const nlohmann::json& options = pending->coordinator.strategy_config;
  Result<std::unique_ptr<strategies::ServerStrategy>> server =
      strategies::make_server_strategy(name, options);
  if (!server.ok()) return server.status().with_context("server strategy");
  pending->server = std::move(server).value();
  Result<std::unique_ptr<strategies::ClientAlgorithm>> client =
      strategies::make_client_algorithm(name, options);
  if (!client.ok()) return client.status().with_context("client algorithm");
  return Status::OK();
}

// Steps 3 and 4 for one entry, with its data set when built (`data` null otherwise).
Status check_with_data(const CheckOptions& options, const FederatedData* data, uint64_t seed,
                       EntryCheck* out, Pending* pending) {
  RunConfig& run = pending->run;
  ModelOptions& model = run.model;
  if (data != nullptr) {
    FEDTAIL_RETURN_IF_ERROR(in_config(fill_model_options_from_data(data->train, &model), "model"));
    out->with_data = true;
  } else {
    FEDTAIL_RETURN_IF_ERROR(fill_from_known_shape(run.data.dataset, &model));
  }
  const bool sized = model.in_channels > 0 && model.image_size > 0 && model.num_classes > 0;
  if (sized) {
    FEDTAIL_RETURN_IF_ERROR(in_config(validate_model_options(model), "model"));
    if (model.arch == kTorchScriptArch) {
      // The user's module: loaded and probed now (convention, classes, input shape), so that a
      // module without a head fails the pre-flight, not the run.
      Rng rng(0);
      Result<Model> built = make_model(model, rng);
      if (!built.ok()) return in_config(built.status(), "model");
    }
  } else {
    // Only the files tell the shape: check the rest of the options with stand-ins.
    ModelOptions stand_in = model;
    for (int* field : {&stand_in.in_channels, &stand_in.image_size, &stand_in.num_classes}) {
      if (*field == 0) *field = 1;
    }
    FEDTAIL_RETURN_IF_ERROR(in_config(validate_model_options(stand_in), "model"));
  }
  if (!options.initialize) return Status::OK();
  if (data == nullptr) {
    if (!sized) {
      out->not_initialized = "without the data, the classes and image shape of dataset \"" +
                             run.data.dataset + "\" are unknown";
      return Status::OK();
    }
    if (run.data.auxiliary_per_class > 0) {
      out->not_initialized = "the run's auxiliary set (data.auxiliary_per_class) needs the data";
      return Status::OK();
    }
  }

  // The context coordinator/round_engine.cc gives a fresh run.
  strategies::RunContext context;
  context.config = &run;
  context.strategy_config = pending->coordinator.strategy_config;
  context.total_rounds = pending->coordinator.rounds;
  context.num_classes = data != nullptr ? data->num_classes() : model.num_classes;
  if (data != nullptr) {
    context.train_class_counts = data->train_class_counts;
    context.auxiliary = data->auxiliary.size() > 0 ? &data->auxiliary : nullptr;
  }
  context.device = torch::kCPU;
  Rng rng = Rng::derive(seed, "init");
  FEDTAIL_RETURN_IF_ERROR(
      pending->server->initialize(context, rng)
          .with_context("strategy " + pending->coordinator.strategy_name + ": initialize"));
  out->initialized = true;
  return Status::OK();
}

std::string data_description(const FederatedData& data, double seconds) {
  const Dataset& train = data.train;
  std::ostringstream text;
  text << data.num_classes() << " classes, " << train.channels() << "x" << train.height() << "x"
       << train.width() << ", " << train.size() << " training / " << data.test.size()
       << " test examples";
  if (data.auxiliary.size() > 0) text << " / " << data.auxiliary.size() << " auxiliary";
  char time[32];
  std::snprintf(time, sizeof(time), ", built in %.1f s", seconds);
  return text.str() + time;
}

std::string plural(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string joined(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

// Who uses a data set, in few words: "every strategy", "every strategy but ratioloss", or the
// labels.
std::string users_text(const std::vector<std::string>& labels, const CheckReport& report) {
  const size_t all = report.entries.size();
  if (labels.size() == all) return all == 1 ? "its strategy" : "every strategy";
  std::vector<std::string> others;
  for (const EntryCheck& entry : report.entries) {
    if (std::find(labels.begin(), labels.end(), entry.label) == labels.end()) {
      others.push_back(entry.label);
    }
  }
  if (others.size() <= 3 && others.size() < labels.size()) {
    return "every strategy but " + joined(others);
  }
  return joined(labels);
}

// The data sections as reported: one line each, except that absent sections with the same reason
// (one missing root feeding several sections) share one.
struct DataLine {
  const DataSectionCheck* section = nullptr;  // the first of them; borrowed from the report
  std::vector<std::string> labels;            // every entry they feed, in plan order
  bool overridden = true;                     // all of them differ from config.data
};

std::vector<DataLine> data_lines(const CheckReport& report) {
  std::vector<DataLine> lines;
  std::vector<int> line_of(report.data.size(), -1);
  for (size_t s = 0; s < report.data.size(); ++s) {
    const DataSectionCheck& section = report.data[s];
    int line = -1;
    for (size_t t = 0; t < s && line < 0 && !section.presence.ok(); ++t) {
      const Status& earlier = report.data[t].presence;
      if (!earlier.ok() && earlier.message() == section.presence.message()) line = line_of[t];
    }
    if (line < 0) {
      line = static_cast<int>(lines.size());
      lines.emplace_back();
      lines.back().section = &section;
    }
    line_of[s] = line;
    lines[line].overridden = lines[line].overridden && section.overridden;
  }
  for (const EntryCheck& entry : report.entries) {
    if (entry.data_section >= 0) lines[line_of[entry.data_section]].labels.push_back(entry.label);
  }
  return lines;
}

}  // namespace

int CheckReport::failed_entries() const {
  int failed = 0;
  for (const EntryCheck& entry : entries) failed += entry.ok() ? 0 : 1;
  return failed;
}

int CheckReport::failed_data() const {
  int failed = 0;
  for (const DataSectionCheck& section : data) failed += section.ok() ? 0 : 1;
  return failed;
}

CheckReport check_plan(const SimulationPlan& plan, const CheckOptions& options) {
  CheckReport report;
  report.rounds = plan.rounds;
  report.num_clients = plan.num_clients;
  report.num_seeds = static_cast<int>(plan.seeds.size());
  const uint64_t seed = plan.seeds.empty() ? 0 : plan.seeds.front();
  std::optional<std::string> base_data;
  {
    Result<DataOptions> parsed =
        parse_data_options(plan.base_config.value("data", nlohmann::json::object()), "config.data");
    if (parsed.ok()) base_data = data_options_to_json(*parsed).dump();
  }

  // Without data: each entry's run config and factories; its data section by content.
  std::vector<Pending> pending(plan.strategies.size());
  std::map<std::string, int> section_of;  // data_options_to_json(...).dump() -> index
  for (size_t i = 0; i < plan.strategies.size(); ++i) {
    const StrategyEntry& entry = plan.strategies[i];
    EntryCheck& out = report.entries.emplace_back();
    out.label = entry.label;
    out.strategy = entry.strategy.value("name", "");
    out.status = guarded("strategy " + out.strategy,
                         [&] { return check_without_data(plan, entry, seed, &out, &pending[i]); });
    if (!pending[i].parsed) continue;  // no run config: no data section
    const std::string key = data_options_to_json(pending[i].run.data).dump();
    auto [it, added] = section_of.emplace(key, static_cast<int>(report.data.size()));
    if (added) {
      DataSectionCheck& section = report.data.emplace_back();
      section.dataset = pending[i].run.data.dataset;
      section.overridden = base_data.has_value() && *base_data != key;
    }
    out.data_section = it->second;
    report.data[it->second].labels.push_back(entry.label);
  }

  // Per data section, one at a time (one data set in memory): presence, the build, then its
  // entries' model options and initialize.
  for (size_t s = 0; s < report.data.size(); ++s) {
    DataSectionCheck& section = report.data[s];
    std::vector<size_t> users;
    for (size_t i = 0; i < report.entries.size(); ++i) {
      if (report.entries[i].data_section == static_cast<int>(s)) users.push_back(i);
    }
    const DataOptions& data_options = pending[users.front()].run.data;
    section.presence = check_data_present(data_options, "config.data");
    std::optional<FederatedData> data;
    if (section.presence.ok() && options.build_data) {
      const auto start = std::chrono::steady_clock::now();
      section.build = guarded("building the data set", [&]() -> Status {
        Result<FederatedData> built = build_federated_data(data_options, seed);
        if (!built.ok()) return in_config(built.status(), "data");
        data = std::move(built).value();
        return Status::OK();
      });
      if (data.has_value()) {
        section.built = true;
        section.description = data_description(
            *data, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
    }
    for (size_t i : users) {
      EntryCheck& out = report.entries[i];
      if (!out.status.ok()) continue;
      if (!section.build.ok()) {
        // The run cannot start; its model would be sized from data that does not build.
        out.not_initialized = "its data set does not build";
        continue;
      }
      const FederatedData* built = data.has_value() ? &*data : nullptr;
      out.status = guarded("strategy " + out.strategy, [&] {
        return check_with_data(options, built, seed, &out, &pending[i]);
      });
      pending[i].server.reset();  // its initial model
    }
  }
  return report;
}

Result<CheckReport> check_simulation(const nlohmann::json& config, const PlanFlags& flags,
                                     const CheckOptions& options) {
  FEDTAIL_ASSIGN_OR_RETURN(SimulationPlan plan, make_plan(config, flags));
  return check_plan(plan, options);
}

std::string format_check_report(const CheckReport& report) {
  std::ostringstream out;
  const std::vector<DataLine> lines = data_lines(report);
  for (const DataLine& line : lines) {
    const DataSectionCheck& section = *line.section;
    const std::string name =
        std::string(line.overridden ? "config.data with overrides" : "config.data") + " (" +
        section.dataset + "; " + users_text(line.labels, report) + ")";
    if (!section.presence.ok()) {
      out << "data  absent  " << name << ": " << section.presence.message() << "\n";
    } else if (!section.build.ok()) {
      out << "data  FAIL    " << name << ": " << section.build.message() << "\n";
    } else if (section.built) {
      out << "data  ok      " << name << ": " << section.description << "\n";
    } else {
      out << "data  present " << name << " (not built)\n";
    }
  }
  size_t width = 0;
  for (const EntryCheck& entry : report.entries) width = std::max(width, entry.label.size());
  for (const EntryCheck& entry : report.entries) {
    if (!entry.ok()) {
      out << "FAIL  " << entry.label << ": " << entry.status.message() << "\n";
      continue;
    }
    out << "ok    " << entry.label << std::string(width - entry.label.size(), ' ') << "  ("
        << entry.strategy << ", " << entry.model << ", " << plural(report.rounds, "round", "rounds")
        << ", " << plural(report.num_clients, "client", "clients") << ", "
        << plural(report.num_seeds, "seed", "seeds");
    if (!entry.not_initialized.empty()) {
      out << "; not initialized: " << entry.not_initialized;
    } else if (entry.initialized && !entry.with_data) {
      out << "; initialized without the data";
    } else if (!entry.with_data) {
      out << "; checked without the data";
    }
    out << ")\n";
  }

  const size_t entries = report.entries.size();
  const int failed = report.failed_entries();
  const auto absent = std::count_if(lines.begin(), lines.end(), [](const DataLine& line) {
    return !line.section->presence.ok();
  });
  const auto unbuilt = std::count_if(
      lines.begin(), lines.end(), [](const DataLine& line) { return !line.section->build.ok(); });
  if (report.ok()) {
    out << "check passed: " << plural(entries, "strategy", "strategies") << " x "
        << plural(report.num_seeds, "seed", "seeds") << " = "
        << plural(entries * report.num_seeds, "run", "runs") << " of "
        << plural(report.rounds, "round", "rounds") << "\n";
    return out.str();
  }
  std::string text = "check failed: ";
  if (failed > 0) {
    text += std::to_string(failed) + " of " + plural(entries, "strategy", "strategies") + " failed";
  } else {
    text += (entries == 1 ? std::string("its strategy passes")
                          : "the " + std::to_string(entries) + " strategies pass") +
            " what could be checked without the data";
  }
  if (absent > 0) {
    text += "; " + plural(absent, "data set is", "data sets are") +
            " absent (see above): no run can start until " + (absent == 1 ? "it is" : "they are") +
            " there";
  }
  if (unbuilt > 0) {
    text += "; " + plural(unbuilt, "data set fails", "data sets fail") + " to build";
  }
  out << text << "\n";
  return out.str();
}

Status check_status(const CheckReport& report) {
  if (report.ok()) return Status::OK();
  std::vector<std::string> problems;
  for (const DataLine& line : data_lines(report)) {
    const DataSectionCheck& section = *line.section;
    if (section.ok()) continue;
    const Status& status = section.presence.ok() ? section.build : section.presence;
    problems.push_back(status.message() + " (the data of " + users_text(line.labels, report) + ")");
  }
  for (const EntryCheck& entry : report.entries) {
    if (!entry.ok()) {
      problems.push_back("strategy \"" + entry.label + "\": " + entry.status.message());
    }
  }
  std::string message = problems.front();
  if (problems.size() > 1) {
    message += "; and " + plural(problems.size() - 1, "more problem", "more problems") +
               " (fedtail-sim --check CONFIG lists them)";
  }
  return Status::FailedPrecondition(message);
}

}  // namespace fedtail::simulation
