#include "strategies/fednova/fednova.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/dtype.h"

namespace fedtail::strategies {

namespace {

std::string number(double value) { return nlohmann::json(value).dump(); }

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// a_i is checked against the a of the most steps config.local allows, with this relative slack
// (the client's recurrence and ours round alike; the slack only absorbs the last bits).
constexpr double kBoundSlack = 1e-9;

// One accepted update's share of τ_eff.
struct Normalizer {
  std::string client_id;
  int64_t num_examples;
  double a;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options and the normaliser

Result<FedNovaOptions> parse_fednova_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedNovaOptions options;
  read_round_options(reader, &options.round);
  reader.read("gmf", &options.gmf);
  reader.check(options.gmf >= 0 && options.gmf < 1, "gmf",
               "must be in [0, 1) (got " + number(options.gmf) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

double fednova_normalizer(int64_t steps, double momentum) {
  if (steps <= 0) return 0;
  if (momentum == 0) return static_cast<double>(steps);
  // The code's FedNova.step: local_counter = local_counter * momentum + 1; vec += local_counter.
  double counter = 0;
  double a = 0;
  for (int64_t t = 0; t < steps; ++t) {
    counter = counter * momentum + 1;
    a += counter;
  }
  return a;
}

int64_t fednova_max_steps(int64_t num_examples, const LocalTrainOptions& local) {
  if (num_examples <= 0 || local.epochs <= 0 || local.batch_size <= 0) return 0;
  const int64_t per_epoch = (num_examples - 1) / local.batch_size + 1;  // ceil, no overflow
  int64_t steps = 0;
  if (__builtin_mul_overflow(per_epoch, static_cast<int64_t>(local.epochs), &steps)) {
    steps = std::numeric_limits<int64_t>::max();
  }
  if (local.max_steps > 0) steps = std::min(steps, local.max_steps);
  return steps;
}

bool fednova_normalizes(const NamedTensor& tensor) {
  return dtype_is_floating(tensor.dtype()) && !ends_with(tensor.name(), ".running_mean") &&
         !ends_with(tensor.name(), ".running_var");
}

namespace {

// The largest a_i the server accepts from a client of `num_examples` examples: the a of
// fednova_max_steps steps, from the closed form (the recurrence would loop over a bound that a
// client's declared example count may make huge).
double max_normalizer(int64_t num_examples, const LocalTrainOptions& local) {
  const double tau = static_cast<double>(fednova_max_steps(num_examples, local));
  const double rho = local.momentum;
  if (rho == 0) return tau;
  return (tau - rho * (1 - std::pow(rho, tau)) / (1 - rho)) / (1 - rho);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Aggregation

// Takes a_i out of each update, hands z_i to FedAvg's Aggregation, and gives next_global τ_eff.
class FedNovaAggregation final : public Aggregation {
 public:
  FedNovaAggregation(FedNovaServer* server, LocalTrainOptions local,
                     std::unique_ptr<Aggregation> fedavg)
      : server_(server), local_(std::move(local)), fedavg_(std::move(fedavg)) {}

  Status add(ClientUpdate update) override {
    const std::string where = std::string("tensor \"") + kFedNovaATensor + "\"";
    const NamedTensor* t = update.bundle.find(kFedNovaATensor);
    if (t == nullptr) {
      return Status::InvalidArgument(where + ": missing (a fednova update carries its a_i)");
    }
    if (t->dtype() != DType::kFloat64 || t->shape() != std::vector<int64_t>{1}) {
      return Status::InvalidArgument(where + ": " + dtype_name(t->dtype()) + " " +
                                     shape_to_string(t->shape()) + " != expected float64 [1]");
    }
    const double a = t->data<double>()[0];
    if (!std::isfinite(a) || a <= 0) {
      return Status::InvalidArgument(where + ": a_i must be finite and > 0 (got " + number(a) +
                                     ")");
    }
    if (update.num_examples <= 0) {
      return Status::InvalidArgument("num_examples: must be > 0 (got " +
                                     std::to_string(update.num_examples) + ")");
    }
    const double bound = max_normalizer(update.num_examples, local_);
    if (a > bound * (1 + kBoundSlack)) {
      return Status::InvalidArgument(
          where + ": a_i = " + number(a) + " exceeds " + number(bound) + ", the a_i of the " +
          std::to_string(fednova_max_steps(update.num_examples, local_)) +
          " SGD steps config.local allows on " + std::to_string(update.num_examples) + " examples");
    }
    TensorBundle z;
    for (NamedTensor& tensor : update.bundle) {
      if (tensor.name() != kFedNovaATensor) FEDTAIL_RETURN_IF_ERROR(z.add(std::move(tensor)));
    }
    update.bundle = std::move(z);
    Normalizer normalizer{update.client_id, update.num_examples, a};
    FEDTAIL_RETURN_IF_ERROR(fedavg_->add(std::move(update)));
    normalizers_.push_back(std::move(normalizer));
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    // τ_eff = Σ n_i a_i / Σ n_i, in client-id order (FedAvg refuses a second update per client).
    std::sort(normalizers_.begin(), normalizers_.end(),
              [](const Normalizer& x, const Normalizer& y) { return x.client_id < y.client_id; });
    double weighted = 0;
    double examples = 0;
    double a_min = std::numeric_limits<double>::infinity();
    double a_max = 0;
    for (const Normalizer& n : normalizers_) {
      weighted += static_cast<double>(n.num_examples) * n.a;
      examples += static_cast<double>(n.num_examples);
      a_min = std::min(a_min, n.a);
      a_max = std::max(a_max, n.a);
    }
    const bool any = !normalizers_.empty();
    const double tau_eff = any ? weighted / examples : 0;
    server_->round_tau_eff_ = tau_eff;
    Result<nlohmann::json> metrics = fedavg_->finish(failures);
    server_->round_tau_eff_ = 0;
    if (!metrics.ok()) return metrics;
    (*metrics)["fednova"] = {{"tau_eff", any ? nlohmann::json(tau_eff) : nlohmann::json()},
                             {"a_min", any ? nlohmann::json(a_min) : nlohmann::json()},
                             {"a_max", any ? nlohmann::json(a_max) : nlohmann::json()},
                             {"gmf", server_->options_.gmf}};
    return metrics;
  }

 private:
  FedNovaServer* const server_;  // borrowed; outlives this
  const LocalTrainOptions local_;
  std::unique_ptr<Aggregation> fedavg_;
  std::vector<Normalizer> normalizers_;  // the accepted updates'
};

// ---------------------------------------------------------------------------------------------
// Server

FedNovaServer::FedNovaServer(const FedNovaOptions& options)
    : FedAvgServer("fednova", options.round), options_(options) {}

Status FedNovaServer::initialize(const RunContext& run, Rng& rng) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  local_ = run.config->local;
  velocity_ = TensorBundle();
  expected_.reset();
  return Status::OK();
}

Status FedNovaServer::resume(const RunContext& run) {
  if (!global_bundle()) return Status::FailedPrecondition("fednova: resume before load_state");
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  local_ = run.config->local;
  return Status::OK();
}

Result<std::vector<TaskSpec>> FedNovaServer::configure_fit(int round,
                                                           const std::vector<ClientInfo>& available,
                                                           Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  if (tasks.empty()) return tasks;
  if (!expected_) {
    TensorBundle expected = global().clone();  // only names, dtypes and shapes are read
    FEDTAIL_RETURN_IF_ERROR(expected.add(
        NamedTensor::from_values<double>(kFedNovaATensor, DType::kFloat64, {1}, {1.0})));
    expected_ = std::make_shared<const TensorBundle>(std::move(expected));
  }
  for (TaskSpec& task : tasks) task.expected_update = expected_;
  return tasks;
}

Result<std::unique_ptr<Aggregation>> FedNovaServer::begin_aggregation(int round) {
  if (!local_) {
    return Status::FailedPrecondition(
        "fednova: no config.local (initialize, or load_state then resume, first)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  return std::unique_ptr<Aggregation>(
      std::make_unique<FedNovaAggregation>(this, *local_, std::move(fedavg)));
}

Result<TensorBundle> FedNovaServer::next_global(int round, TensorBundle average) {
  (void)round;
  const double tau_eff = round_tau_eff_;
  if (!(tau_eff > 0)) return Status::Internal("fednova: next_global outside a FedNova aggregation");
  const double gmf = options_.gmf;
  TensorBundle next, velocity;
  try {
    for (NamedTensor& mean : average) {
      if (!fednova_normalizes(mean)) {  // BatchNorm statistics, counters: the weighted mean
        FEDTAIL_RETURN_IF_ERROR(next.add(std::move(mean)));
        continue;
      }
      const NamedTensor* g = global().find(mean.name());
      if (g == nullptr) return Status::Internal("fednova: no global tensor " + mean.name());
      const torch::Tensor x = to_torch(*g).to(torch::kFloat64);
      // τ_eff Σ p_i d_i = τ_eff (x − z̄).
      torch::Tensor step = tau_eff * (x - to_torch(mean).to(torch::kFloat64));
      if (gmf > 0) {
        const std::string name = kFedNovaVelocityPrefix + mean.name();
        const NamedTensor* v = velocity_.find(name);
        if (v != nullptr) step = gmf * to_torch(*v) + step;
        FEDTAIL_ASSIGN_OR_RETURN(NamedTensor nv, from_torch(name, step));
        FEDTAIL_RETURN_IF_ERROR(velocity.add(std::move(nv)));
      }
      FEDTAIL_ASSIGN_OR_RETURN(
          NamedTensor out, from_torch(mean.name(), (x - step).to(dtype_to_torch(mean.dtype()))));
      FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out)));
    }
  } catch (const std::exception& e) {
    return torch_failure("fednova: server update", e);
  }
  if (gmf > 0) velocity_ = std::move(velocity);
  return next;
}

Status FedNovaServer::save_extra_state(TensorBundle* state) const {
  for (const NamedTensor& v : velocity_) FEDTAIL_RETURN_IF_ERROR(state->add(v.clone()));
  return Status::OK();
}

Status FedNovaServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                       const TensorBundle& global) {
  (void)metadata;
  const std::string prefix = kFedNovaVelocityPrefix;
  for (const NamedTensor& t : extra) {
    const NamedTensor* g =
        starts_with(t.name(), prefix) ? global.find(t.name().substr(prefix.size())) : nullptr;
    if (g == nullptr || !fednova_normalizes(*g)) {
      return Status::InvalidArgument("fednova state: unexpected tensor \"" + t.name() + "\"");
    }
    if (t.dtype() != DType::kFloat64 || t.shape() != g->shape()) {
      return Status::InvalidArgument(
          "fednova state: tensor \"" + t.name() + "\": " + dtype_name(t.dtype()) + " " +
          shape_to_string(t.shape()) + " != expected float64 " + shape_to_string(g->shape()));
    }
  }
  velocity_ = std::move(extra);
  expected_.reset();
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<FitOutput> FedNovaClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr) {
    return Status::InvalidArgument("fednova client fit: the context of client " +
                                   context.client_id + " lacks a model, data, config or rng");
  }
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(**context.model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats, train(context));
    if (stats.steps < 1) return Status::Internal("fednova client fit: no SGD step was taken");
    const double a = fednova_normalizer(stats.steps, context.config->local.momentum);
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle trained, module_state(**context.model));
    FitOutput out;
    for (NamedTensor& y : trained) {
      if (!fednova_normalizes(y)) {
        FEDTAIL_RETURN_IF_ERROR(out.update.add(std::move(y)));
        continue;
      }
      const NamedTensor* x = global.find(y.name());
      if (x == nullptr) return Status::Internal("fednova client fit: no global " + y.name());
      // z_i = x − (x − y_i) / a_i, in float64.
      const torch::Tensor xd = to_torch(*x).to(torch::kFloat64);
      const torch::Tensor z = xd - (xd - to_torch(y).to(torch::kFloat64)) / a;
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor zt,
                               from_torch(y.name(), z.to(dtype_to_torch(y.dtype()))));
      FEDTAIL_RETURN_IF_ERROR(out.update.add(std::move(zt)));
    }
    FEDTAIL_RETURN_IF_ERROR(out.update.add(
        NamedTensor::from_values<double>(kFedNovaATensor, DType::kFloat64, {1}, {a})));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss}, {"steps", stats.steps}, {"a", a}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("fednova client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fednova_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedNovaOptions options, parse_fednova_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedNovaServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fednova_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_fednova_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedNovaClient>());
}

StrategyEntry fednova_strategy_entry() {
  return {"fednova",
          "FedNova: clients upload their update normalised by their local step count; the server "
          "takes tau_eff normalised steps (Wang et al. 2020)",
          make_fednova_server, make_fednova_client};
}

}  // namespace fedtail::strategies
