#include "strategies/fedavg/fedavg.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {

namespace {

constexpr int kStateFormat = 1;

// fit needs the training data and an Rng; evaluate only the test data (which may be absent).
Status require_client_context(const ClientContext& context, const char* what, bool for_fit) {
  if (context.model == nullptr || context.config == nullptr ||
      (for_fit && (context.train == nullptr || context.rng == nullptr))) {
    return Status::InvalidArgument(std::string("fedavg client ") + what +
                                   ": the context of client " + context.client_id +
                                   " lacks a model, data, config or rng");
  }
  return Status::OK();
}

}  // namespace

// Folds one round's updates into the server's WeightedAverage. Updates are checked as they
// arrive (a refused one is answered at once) and folded in groups of fold_group_size() (up to 4,
// at most 96 MiB: ResNet-18 updates in pairs) with WeightedAverage::add_all, so that the
// accumulators are swept once per group rather than once per update. Same result, bit for bit;
// the price is up to one group less one update held in memory (fedtail-bench "aggregation").
class FedAvgAggregation final : public Aggregation {
 public:
  FedAvgAggregation(FedAvgServer* server, int round, WeightedAverage average)
      : server_(server),
        round_(round),
        robust_(server->round_options().robust),
        average_(std::move(average)) {}

  Status add(ClientUpdate update) override {
    if (seen_.count(update.client_id) != 0) {
      return Status::InvalidArgument("client " + update.client_id +
                                     " sent a second update this round");
    }
    FEDTAIL_RETURN_IF_ERROR(average_.check(update.bundle, update.num_examples));
    int64_t pending_examples = 0;  // committed only once the update is accepted
    if (__builtin_add_overflow(pending_examples_, update.num_examples, &pending_examples) ||
        pending_examples >
            std::numeric_limits<int64_t>::max() - average_.total_examples() - buffered_examples_) {
      return Status::InvalidArgument("num_examples: the total example count overflows int64");
    }
    if (robust_.buffered() && buffered_bytes(update.bundle.payload_bytes(), buffered_.size() + 1) >
                                  robust_.max_buffered_bytes) {
      return Status::ResourceExhausted("robust " + std::string(robust_method_name(robust_.method)) +
                                       ": holding " + std::to_string(buffered_.size() + 1) +
                                       " updates would exceed " +
                                       "config.strategy.robust.max_buffered_bytes (" +
                                       std::to_string(robust_.max_buffered_bytes) + ")");
    }
    // Bound what this client can do to the model: clip its step, keep BatchNorm variances >= 0.
    if (robust_.clip_norm > 0) {
      FEDTAIL_ASSIGN_OR_RETURN(double norm,
                               clip_update(server_->global(), &update.bundle, robust_.clip_norm));
      max_norm_ = std::max(max_norm_, norm);
      if (norm > robust_.clip_norm) ++clipped_;
    }
    batchnorm_fixed_ += sanitize_batchnorm(&update.bundle);
    seen_.insert(update.client_id);
    extra_contributors_ += std::max(update.contributors, 1) - 1;
    const nlohmann::json& m = update.metrics;
    if (m.is_object() && m.contains("loss") && m["loss"].is_number()) {
      const double loss = m["loss"].get<double>();
      if (std::isfinite(loss)) {
        loss_sum_ += loss * static_cast<double>(update.num_examples);
        loss_weight_ += static_cast<double>(update.num_examples);
      }
    }
    if (robust_.buffered()) {
      buffered_examples_ += update.num_examples;
      buffered_.push_back(std::move(update));
      return Status::OK();
    }
    pending_examples_ = pending_examples;
    const size_t group = fold_group_size(update.bundle.payload_bytes());
    pending_.push_back(std::move(update));
    if (pending_.size() >= group) return fold();
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    FEDTAIL_RETURN_IF_ERROR(fold());
    Result<nlohmann::json> metrics = Status::Internal("unset");
    if (robust_.buffered()) {
      metrics = server_->finish_round(
          round_, static_cast<int>(buffered_.size()), buffered_examples_,
          [this]() { return robust_mean(); }, loss_sum_, loss_weight_, failures);
    } else {
      metrics = server_->finish_round(
          round_, average_.updates() + extra_contributors_, average_.total_examples(),
          [this]() { return average_.finish(); }, loss_sum_, loss_weight_, failures);
    }
    server_->spare_average_ = std::move(average_);
    if (metrics.ok() &&
        (robust_.method != RobustMethod::kNone || robust_.clip_norm > 0 || batchnorm_fixed_ > 0)) {
      nlohmann::json robust = report_.to_json();
      robust["method"] = robust_method_name(robust_.method);
      if (robust_.clip_norm > 0) {
        robust["clip_norm"] = robust_.clip_norm;
        robust["clipped"] = clipped_;
        robust["max_update_norm"] = max_norm_;
      }
      if (robust_.buffered()) {
        uint64_t bytes = 0;
        for (const ClientUpdate& u : buffered_) bytes += u.bundle.payload_bytes();
        robust["buffered_bytes"] = bytes;
      }
      robust["batchnorm_variances_clamped"] = batchnorm_fixed_;
      (*metrics)["robust"] = std::move(robust);
    }
    return metrics;
  }

 private:
  // Folds the pending updates (checked on arrival, so this cannot fail short of a bug).
  Status fold() {
    if (pending_.empty()) return Status::OK();
    std::vector<WeightedAverage::Weighted> batch;
    batch.reserve(pending_.size());
    for (const ClientUpdate& u : pending_) batch.push_back({&u.bundle, u.num_examples});
    Status status = average_.add_all(batch);
    pending_.clear();
    pending_examples_ = 0;
    return status;
  }

  // The buffered method's aggregate of the round's updates.
  Result<TensorBundle> robust_mean() {
    std::vector<const TensorBundle*> updates;
    std::vector<int64_t> examples;
    for (const ClientUpdate& u : buffered_) {
      updates.push_back(&u.bundle);
      examples.push_back(u.num_examples);
    }
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle mean,
                             robust_aggregate(robust_, updates, examples, &report_));
    batchnorm_fixed_ += sanitize_batchnorm(&mean);
    return mean;
  }

  FedAvgServer* const server_;  // borrowed; outlives this
  const int round_;
  const RobustOptions robust_;
  WeightedAverage average_;
  std::vector<ClientUpdate> pending_;  // checked, not yet folded
  int64_t pending_examples_ = 0;
  std::vector<ClientUpdate> buffered_;  // buffered robust methods: the round's updates
  int64_t buffered_examples_ = 0;
  int extra_contributors_ = 0;  // sum of (contributors - 1): clients behind a mean update
  RobustReport report_;
  int64_t clipped_ = 0;          // updates whose step exceeded clip_norm
  double max_norm_ = 0;          // the largest step norm before clipping
  int64_t batchnorm_fixed_ = 0;  // negative running variances clamped to 0
  std::set<std::string> seen_;   // clients whose update was accepted
  double loss_sum_ = 0;          // Σ n_k · loss_k over updates that reported a finite loss
  double loss_weight_ = 0;       // Σ n_k over the same updates
};

FedAvgServer::FedAvgServer(std::string name, RoundOptions options)
    : name_(std::move(name)), options_(options) {}

Status FedAvgServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(model_options, rng));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, module_state(*model));
  state.mutable_metadata() = {{"strategy", name_}, {"round", 0}};
  model_options_ = model_options;
  input_ = run.config->local.augment;
  global_ = std::make_shared<const TensorBundle>(std::move(state));
  return Status::OK();
}

Status FedAvgServer::check_ready() const {
  if (!global_) {
    return Status::FailedPrecondition(name_ + ": no global model (initialize or load_state first)");
  }
  return Status::OK();
}

Result<std::vector<TaskSpec>> FedAvgServer::configure_fit(int round,
                                                          const std::vector<ClientInfo>& available,
                                                          Rng& rng) {
  (void)round;
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  FEDTAIL_ASSIGN_OR_RETURN(
      std::vector<ClientInfo> chosen,
      sample_clients(available, options_.fraction_fit, options_.min_fit_clients, rng));
  FEDTAIL_RETURN_IF_ERROR(check_buffered_bytes(chosen.size()));
  std::vector<TaskSpec> tasks;
  tasks.reserve(chosen.size());
  for (const ClientInfo& c : chosen) {
    TaskSpec task;
    task.client_id = c.id;
    task.bundle = global_;
    task.expected_update = global_;  // what WeightedAverage folds: exactly the global tensors
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Status FedAvgServer::check_buffered_bytes(size_t clients) const {
  const RobustOptions& robust = options_.robust;
  if (!robust.buffered() || !global_) return Status::OK();
  const uint64_t bytes = buffered_bytes(global_->payload_bytes(), clients);
  if (bytes <= robust.max_buffered_bytes) return Status::OK();
  return Status::FailedPrecondition(
      name_ + ": robust " + robust_method_name(robust.method) + " would hold " +
      std::to_string(clients) + " updates of " + std::to_string(global_->payload_bytes()) +
      " bytes (" + std::to_string(bytes) + " bytes), over config.strategy.robust." +
      "max_buffered_bytes (" + std::to_string(robust.max_buffered_bytes) + ")");
}

Result<std::unique_ptr<Aggregation>> FedAvgServer::begin_aggregation(int round) {
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  std::optional<WeightedAverage> average;
  if (spare_average_ && spare_average_->reset(global_).ok()) {
    average = std::move(spare_average_);
  } else {
    FEDTAIL_ASSIGN_OR_RETURN(average, WeightedAverage::create(global_));
  }
  spare_average_.reset();
  return std::unique_ptr<Aggregation>(
      std::make_unique<FedAvgAggregation>(this, round, std::move(*average)));
}

Result<nlohmann::json> FedAvgServer::finish_round(
    int round, int updates, int64_t examples, const std::function<Result<TensorBundle>()>& mean_of,
    double loss_sum, double loss_weight, const std::vector<ClientFailure>& failures) {
  nlohmann::json metrics = {
      {"updated", false},
      {"updates", updates},
      {"failures", failures.size()},
      {"examples", examples},
      {"loss", loss_weight > 0 ? nlohmann::json(loss_sum / loss_weight) : nlohmann::json()}};
  if (!options_.accept_failures && !failures.empty()) {
    metrics["reason"] = std::to_string(failures.size()) +
                        " selected client(s) failed and accept_failures is false; the global "
                        "model is kept";
    return metrics;
  }
  if (updates < options_.min_fit_clients) {
    metrics["reason"] = std::to_string(updates) + " valid update(s), fewer than " +
                        "min_fit_clients = " + std::to_string(options_.min_fit_clients) +
                        "; the global model is kept";
    return metrics;
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle mean, mean_of());
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle next, next_global(round, std::move(mean)));
  FEDTAIL_RETURN_IF_ERROR(
      install_global(std::move(next), round).with_context(name_ + ": next_global"));
  metrics["updated"] = true;
  return metrics;
}

Status FedAvgServer::install_global(TensorBundle global, int round) {
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  FEDTAIL_RETURN_IF_ERROR(check_compatible(global, *global_));
  global.mutable_metadata() = {{"strategy", name_}, {"round", round}};
  global_ = std::make_shared<const TensorBundle>(std::move(global));
  return Status::OK();
}

Status FedAvgServer::supports_mean_aggregation() const {
  if (options_.robust.enabled()) {
    return Status::FailedPrecondition(
        "config.strategy.robust needs each client's update (a robust rule or per-update clipping)");
  }
  return Status::OK();
}

Result<TensorBundle> FedAvgServer::next_global(int round, TensorBundle average) {
  (void)round;
  return average;
}

Result<std::vector<TaskSpec>> FedAvgServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  (void)round;
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  std::vector<TaskSpec> tasks;
  if (options_.fraction_evaluate == 0 && options_.min_evaluate_clients == 0) return tasks;
  FEDTAIL_ASSIGN_OR_RETURN(
      std::vector<ClientInfo> chosen,
      sample_clients(available, options_.fraction_evaluate, options_.min_evaluate_clients, rng));
  for (const ClientInfo& c : chosen) {
    TaskSpec task;
    task.client_id = c.id;
    task.bundle = global_;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<nlohmann::json> FedAvgServer::aggregate_evaluate(
    int round, const std::vector<EvalReport>& reports, const std::vector<ClientFailure>& failures) {
  (void)round;
  return aggregate_personalized_accuracy(reports, failures);
}

Result<nlohmann::json> FedAvgServer::evaluate(int round, const ServerEvalContext& context) {
  (void)round;
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  return evaluate_classifier(model_options_, input_, *global_, context);
}

Result<TensorBundle> FedAvgServer::save_state() const {
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  TensorBundle state;
  for (const NamedTensor& t : *global_) FEDTAIL_RETURN_IF_ERROR(state.add(t.clone()));
  state.mutable_metadata() = {{"strategy", name_},
                              {"format", kStateFormat},
                              {"model", model_options_to_json(model_options_)},
                              {"input", augment_options_to_json(input_)},
                              {"global_metadata", global_->metadata()}};
  FEDTAIL_RETURN_IF_ERROR(save_extra_state(&state));
  return state;
}

Status FedAvgServer::load_state(TensorBundle state) {
  const std::string where = name_ + " state";
  const nlohmann::json& meta = state.metadata();
  if (!meta.contains("strategy") || meta["strategy"] != name_) {
    return Status::InvalidArgument(
        where + ": saved by strategy " +
        (meta.contains("strategy") ? meta["strategy"].dump() : std::string("(unknown)")) +
        ", not \"" + name_ + "\"");
  }
  if (!meta.contains("format") || meta["format"] != kStateFormat) {
    return Status::InvalidArgument(where + ": unsupported format " +
                                   (meta.contains("format") ? meta["format"].dump() : "(none)"));
  }
  if (!meta.contains("model") || !meta.contains("input") || !meta.contains("global_metadata") ||
      !meta["global_metadata"].is_object()) {
    return Status::InvalidArgument(where + ": metadata lacks model, input or global_metadata");
  }
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(meta["model"], "state.model"));
  FEDTAIL_RETURN_IF_ERROR(validate_model_options(model_options).with_context("state"));
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions input,
                           parse_augment_options(meta["input"], "state.input"));

  TensorBundle global, extra;
  for (NamedTensor& t : state) {
    TensorBundle& into = t.name().find('/') == std::string::npos ? global : extra;
    FEDTAIL_RETURN_IF_ERROR(into.add(std::move(t)));
  }
  if (global.empty()) return Status::InvalidArgument(where + ": no global model tensor");
  FEDTAIL_RETURN_IF_ERROR(global.set_metadata(meta["global_metadata"]));
  FEDTAIL_RETURN_IF_ERROR(load_extra_state(std::move(extra), meta, global));

  model_options_ = model_options;
  input_ = std::move(input);
  global_ = std::make_shared<const TensorBundle>(std::move(global));
  return Status::OK();
}

Status FedAvgServer::save_extra_state(TensorBundle* state) const {
  (void)state;
  return Status::OK();
}

Status FedAvgServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                      const TensorBundle& global) {
  (void)metadata;
  (void)global;
  if (!extra.empty()) {
    return Status::InvalidArgument(name_ + " state: unexpected tensor \"" + extra.at(0).name() +
                                   "\"");
  }
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<TrainStats> FedAvgClient::train(ClientContext& context) {
  return train_local(*context.model, *context.train, context.config->local, context.device,
                     *context.rng, context.global_train_counts);
}

Result<FitOutput> FedAvgClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_client_context(context, "fit", /*for_fit=*/true));
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(**context.model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats, train(context));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(**context.model));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss}, {"steps", stats.steps}};
    return out;
  } catch (const std::exception& e) {
    return Status::Internal("fedavg client fit: " + std::string(e.what()));
  }
}

Result<nlohmann::json> FedAvgClient::evaluate(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_client_context(context, "evaluate", /*for_fit=*/false));
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(**context.model, global, /*strict=*/true).with_context("global model"));
    // The global model unchanged: the worker's clients can share its backbone's features.
    const PayloadDigest version = payload_digest(global);
    return evaluate_classifier_on_client(context, *context.model, &version);
  } catch (const std::exception& e) {
    return Status::Internal("fedavg client evaluate: " + std::string(e.what()));
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fedavg_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(RoundOptions options, parse_round_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedavg", options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedavg_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_round_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedAvgClient>());
}

StrategyEntry fedavg_strategy_entry() {
  return {"fedavg", "FedAvg: example-weighted mean of the clients' models (McMahan et al. 2017)",
          make_fedavg_server, make_fedavg_client};
}

}  // namespace fedtail::strategies
