// SCAFFOLD (scaffold.h): the options, the server (tasks with c, the Aggregation that splits each
// update into the model and Δc_i, c's update, state) and the registration. The client and the
// loss are scaffold_client.cc.
#include "strategies/scaffold/scaffold.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/model_options.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/dtype.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {

namespace {

constexpr char kName[] = "scaffold";

bool has_prefix(const std::string& name, const char* prefix) {
  return name.compare(0, std::strlen(prefix), prefix) == 0;
}

// "0", "0.5", "-1": the value as a user would write it.
std::string format_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string spec(const NamedTensor& t) {
  return std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape());
}

// The names of the trainable parameters (requires_grad) of the model `options` describes, in
// its named_parameters() order. The weights are thrown away: only the names matter, so the draws
// come from a fixed Rng rather than from the run's.
Result<std::vector<std::string>> trainable_parameters(const ModelOptions& options) {
  Rng unused(0);
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(options, unused));
  std::vector<std::string> names;
  try {
    for (const auto& p : model->named_parameters()) {
      if (p.value().requires_grad()) names.push_back(p.key());
    }
  } catch (const std::exception& e) {
    return torch_failure(std::string(kName) + ": listing the model's parameters", e);
  }
  return names;
}

// ‖c‖₂ over every tensor of `control`, for metrics.
double control_norm(const TensorBundle& control) {
  double sum = 0;
  for (const NamedTensor& t : control) {
    sum += to_torch(t).to(torch::kFloat64).pow(2).sum().item<double>();
  }
  return std::sqrt(sum);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<ScaffoldOptions> parse_scaffold_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  ScaffoldOptions options;
  read_round_options(reader, &options.round);
  reader.read("server_lr", &options.server_lr);
  reader.check(std::isfinite(options.server_lr) && options.server_lr > 0, "server_lr",
               "must be > 0 (got " + format_number(options.server_lr) + ")");
  reader.read("effective_steps", &options.effective_steps);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

// ---------------------------------------------------------------------------------------------
// Aggregation

// FedAvg's Aggregation for the model part of each update, beside the float64 sums Σ_i Δc_i.
class ScaffoldAggregation final : public Aggregation {
 public:
  ScaffoldAggregation(ScaffoldServer* server, std::unique_ptr<Aggregation> fedavg,
                      int64_t available, std::vector<torch::Tensor> sums)
      : server_(server),
        fedavg_(std::move(fedavg)),
        expected_(server->expected_update_),
        names_(server->parameters_),
        available_(available),
        sums_(std::move(sums)) {}

  Status add(ClientUpdate update) override {
    const std::string where = std::string(kName) + ": update of client " + update.client_id;
    // Names, dtypes and shapes of everything, Δc included, before anything is folded in.
    FEDTAIL_RETURN_IF_ERROR(check_compatible(update.bundle, *expected_).with_context(where));
    TensorBundle model;
    TensorBundle deltas;
    for (NamedTensor& t : update.bundle) {
      TensorBundle& into = has_prefix(t.name(), kScaffoldDeltaPrefix) ? deltas : model;
      FEDTAIL_RETURN_IF_ERROR(into.add(std::move(t)));
    }
    // Converted before FedAvg's add: once that has accepted the model, folding Δc cannot fail.
    std::vector<torch::Tensor> converted;
    converted.reserve(names_.size());
    try {
      for (const std::string& name : names_) {
        const NamedTensor* d = deltas.find(kScaffoldDeltaPrefix + name);
        if (d == nullptr) return Status::Internal(where + ": no Δc for " + name);
        converted.push_back(to_torch(*d).to(torch::kFloat64));
      }
    } catch (const std::exception& e) {
      return torch_failure(where, e);
    }
    ClientUpdate model_update;
    model_update.client_id = update.client_id;
    model_update.num_examples = update.num_examples;
    model_update.bundle = std::move(model);
    model_update.metrics = std::move(update.metrics);
    FEDTAIL_RETURN_IF_ERROR(fedavg_->add(std::move(model_update)));
    for (size_t i = 0; i < sums_.size(); ++i) sums_[i].add_(converted[i]);
    ++updates_;
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    // c + (1/N) Σ_i Δc_i, computed before FedAvg's finish installs the new model, so that an
    // error leaves the server as it was.
    TensorBundle next;
    if (updates_ > 0) {
      try {
        const TensorBundle& control = server_->control_;
        for (size_t i = 0; i < names_.size(); ++i) {
          const NamedTensor* c = control.find(kScaffoldControlPrefix + names_[i]);
          if (c == nullptr) return Status::Internal(std::string(kName) + ": no c for " + names_[i]);
          const torch::Tensor value =
              to_torch(*c).to(torch::kFloat64) + sums_[i] / static_cast<double>(available_);
          FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t,
                                   from_torch(c->name(), value.to(dtype_to_torch(c->dtype()))));
          FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
        }
      } catch (const std::exception& e) {
        return torch_failure(std::string(kName) + ": control variate update", e);
      }
    }
    FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json metrics, fedavg_->finish(failures));
    if (updates_ > 0 && metrics.value("updated", false)) server_->control_ = std::move(next);
    try {
      metrics["scaffold"] = {{"available_clients", available_},
                             {"control_updates", updates_},
                             {"control_norm", control_norm(server_->control_)}};
    } catch (const std::exception& e) {
      return torch_failure(std::string(kName) + ": metrics", e);
    }
    return metrics;
  }

 private:
  ScaffoldServer* const server_;  // borrowed; outlives this
  std::unique_ptr<Aggregation> fedavg_;
  const std::shared_ptr<const TensorBundle> expected_;  // the round's expected_update
  const std::vector<std::string> names_;                // trainable parameters, c's order
  const int64_t available_;                             // N (>= 1)
  std::vector<torch::Tensor> sums_;                     // Σ_i Δc_i per parameter, float64, CPU
  int64_t updates_ = 0;                                 // |S|: accepted updates
};

// ---------------------------------------------------------------------------------------------
// Server

ScaffoldServer::ScaffoldServer(const ScaffoldOptions& options)
    : FedAvgServer(kName, options.round), options_(options) {}

Result<ScaffoldServer::Controls> ScaffoldServer::make_controls(const ModelOptions& model_options,
                                                               const TensorBundle& global,
                                                               const TensorBundle* saved,
                                                               const std::string& where) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<std::string> names, trainable_parameters(model_options));
  if (names.empty())
    return Status::InvalidArgument(where + ": the model has no trainable parameter");
  Controls out;
  TensorBundle expected;  // the upload: the global tensors, then one Δc per parameter
  for (const NamedTensor& t : global) {
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor z, NamedTensor::zeros(t.name(), t.dtype(), t.shape()));
    FEDTAIL_RETURN_IF_ERROR(expected.add(std::move(z)));
  }
  for (const std::string& name : names) {
    const NamedTensor* p = global.find(name);
    if (p == nullptr || !dtype_is_floating(p->dtype())) {
      return Status::InvalidArgument(where + ": the global model has no floating-point tensor \"" +
                                     name + "\" (a trainable parameter of its model)");
    }
    const std::string control_name = kScaffoldControlPrefix + name;
    if (saved == nullptr) {
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor c,
                               NamedTensor::zeros(control_name, p->dtype(), p->shape()));
      FEDTAIL_RETURN_IF_ERROR(out.control.add(std::move(c)));
    } else {
      const NamedTensor* c = saved->find(control_name);
      if (c == nullptr) {
        return Status::InvalidArgument(where + ": tensor \"" + control_name +
                                       "\": missing (expected " + spec(*p) + ")");
      }
      if (c->dtype() != p->dtype() || c->shape() != p->shape()) {
        return Status::InvalidArgument(where + ": tensor \"" + control_name + "\": " + spec(*c) +
                                       " != expected " + spec(*p));
      }
      FEDTAIL_RETURN_IF_ERROR(check_finite(*c).with_context(where));
      FEDTAIL_RETURN_IF_ERROR(out.control.add(c->clone()));
    }
    FEDTAIL_ASSIGN_OR_RETURN(
        NamedTensor d, NamedTensor::zeros(kScaffoldDeltaPrefix + name, p->dtype(), p->shape()));
    FEDTAIL_RETURN_IF_ERROR(expected.add(std::move(d)));
  }
  if (saved != nullptr) {
    for (const NamedTensor& t : *saved) {
      if (!out.control.contains(t.name())) {
        return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
      }
    }
  }
  out.parameters = std::move(names);
  out.expected_update = std::make_shared<const TensorBundle>(std::move(expected));
  return out;
}

void ScaffoldServer::install(Controls controls) {
  parameters_ = std::move(controls.parameters);
  control_ = std::move(controls.control);
  expected_update_ = std::move(controls.expected_update);
  configured_round_ = -1;
  available_clients_ = 0;
}

Status ScaffoldServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  FEDTAIL_ASSIGN_OR_RETURN(Controls controls,
                           make_controls(model_options, global(), /*saved=*/nullptr,
                                         std::string(kName) + " initialize"));
  install(std::move(controls));
  return Status::OK();
}

Result<std::vector<TaskSpec>> ScaffoldServer::configure_fit(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  if (parameters_.empty() || !expected_update_) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": no control variate (initialize or load_state first)");
  }
  configured_round_ = round;
  available_clients_ = static_cast<int64_t>(available.size());
  if (tasks.empty()) return tasks;
  TensorBundle bundle = global().clone();  // the metadata too
  for (const NamedTensor& c : control_) FEDTAIL_RETURN_IF_ERROR(bundle.add(c.clone()));
  auto shared = std::make_shared<const TensorBundle>(std::move(bundle));
  for (TaskSpec& task : tasks) {
    task.bundle = shared;
    task.expected_update = expected_update_;
  }
  return tasks;
}

Result<std::unique_ptr<Aggregation>> ScaffoldServer::begin_aggregation(int round) {
  if (parameters_.empty() || !expected_update_) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": no control variate (initialize or load_state first)");
  }
  if (configured_round_ != round || available_clients_ < 1) {
    return Status::FailedPrecondition(
        std::string(kName) + ": round " + std::to_string(round) +
        " was not configured by configure_fit, so N (the clients available) is unknown");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  std::vector<torch::Tensor> sums;
  try {
    for (const NamedTensor& c : control_) {
      std::vector<int64_t> shape = c.shape();
      sums.push_back(torch::zeros(shape, torch::kFloat64));
    }
  } catch (const std::exception& e) {
    return torch_failure(std::string(kName) + ": begin_aggregation", e);
  }
  return std::unique_ptr<Aggregation>(std::make_unique<ScaffoldAggregation>(
      this, std::move(fedavg), available_clients_, std::move(sums)));
}

Result<TensorBundle> ScaffoldServer::next_global(int round, TensorBundle average) {
  (void)round;
  if (options_.server_lr == 1.0) return average;  // exactly FedAvg's model
  const std::set<std::string> trainable(parameters_.begin(), parameters_.end());
  const TensorBundle& x = global();
  TensorBundle next;
  try {
    for (NamedTensor& mean : average) {
      if (trainable.count(mean.name()) == 0 || !dtype_is_floating(mean.dtype())) {
        FEDTAIL_RETURN_IF_ERROR(next.add(std::move(mean)));  // BatchNorm statistics, counters
        continue;
      }
      const NamedTensor* g = x.find(mean.name());
      if (g == nullptr) {
        return Status::Internal(std::string(kName) + ": no global tensor " + mean.name());
      }
      const torch::Tensor old = to_torch(*g).to(torch::kFloat64);
      const torch::Tensor step =
          old + options_.server_lr * (to_torch(mean).to(torch::kFloat64) - old);
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out,
                               from_torch(mean.name(), step.to(dtype_to_torch(mean.dtype()))));
      FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out)));
    }
  } catch (const std::exception& e) {
    return torch_failure(std::string(kName) + ": server step", e);
  }
  return next;
}

Status ScaffoldServer::save_extra_state(TensorBundle* state) const {
  if (parameters_.empty()) {
    return Status::FailedPrecondition(std::string(kName) + ": no control variate to save");
  }
  for (const NamedTensor& c : control_) FEDTAIL_RETURN_IF_ERROR(state->add(c.clone()));
  return Status::OK();
}

Status ScaffoldServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                        const TensorBundle& global) {
  const std::string where = std::string(kName) + " state";
  if (!metadata.contains("model")) {
    return Status::InvalidArgument(where + ": the metadata has no \"model\"");
  }
  // FedAvgServer::load_state has validated it already; the parameter list needs it here too.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(Controls controls, make_controls(model_options, global, &extra, where));
  install(std::move(controls));
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_scaffold_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(ScaffoldOptions options, parse_scaffold_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<ScaffoldServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_scaffold_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(ScaffoldOptions options, parse_scaffold_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<ScaffoldClient>(options));
}

StrategyEntry scaffold_strategy_entry() {
  return {"scaffold",
          "SCAFFOLD: FedAvg whose clients step along g_i + c - c_i, with control variates "
          "updated by option II (Karimireddy et al. 2020)",
          make_scaffold_server, make_scaffold_client};
}

}  // namespace fedtail::strategies
