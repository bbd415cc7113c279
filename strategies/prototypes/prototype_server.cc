#include "strategies/prototypes/prototype_server.h"

#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "common/learning/classification_loss.h"
#include "common/learning/model_options.h"
#include "strategies/classifier_eval.h"
#include "strategies/prototypes/prototype_average.h"

namespace fedtail::strategies {
namespace {

constexpr int kStateFormat = 1;

}  // namespace

// Folds one round's uploads into a PrototypeAverage.
class PrototypeAggregation final : public Aggregation {
 public:
  PrototypeAggregation(PrototypeServer* server, int round)
      : server_(server),
        round_(round),
        average_(server->num_classes(), server->feature_dim(), server->options().weighted) {}

  Status add(ClientUpdate update) override {
    const std::string what = "update of " + update.client_id;
    if (seen_.count(update.client_id) != 0) {
      return Status::InvalidArgument("client " + update.client_id +
                                     " sent a second update this round");
    }
    if (update.num_examples <= 0) {
      return Status::InvalidArgument(what + ": num_examples must be > 0 (got " +
                                     std::to_string(update.num_examples) + ")");
    }
    FEDTAIL_RETURN_IF_ERROR(
        check_tensor_names(update.bundle, {kPrototypesTensor, kCountsTensor}, what));
    FEDTAIL_ASSIGN_OR_RETURN(PrototypeSet set,
                             read_prototype_tensors(update.bundle, server_->num_classes(),
                                                    server_->feature_dim(), what));
    FEDTAIL_RETURN_IF_ERROR(average_.add(set).with_context(what));
    seen_.insert(update.client_id);
    examples_ += update.num_examples;
    const double n = static_cast<double>(update.num_examples);
    if (update.metrics.is_object()) {
      for (const auto& [key, value] : update.metrics.items()) {
        if (!value.is_number()) continue;
        const double v = value.get<double>();
        if (!std::isfinite(v)) continue;
        auto& [sum, weight] = metric_sums_[key];
        sum += v * n;
        weight += n;
      }
    }
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    nlohmann::json means = nlohmann::json::object();
    for (const auto& [key, sum_weight] : metric_sums_) {
      means[key] = sum_weight.first / sum_weight.second;
    }
    const double loss = means.contains("loss") ? means["loss"].get<double>() : std::nan("");
    return server_->finish_round(round_, average_, means, loss, examples_, failures);
  }

 private:
  PrototypeServer* const server_;  // borrowed; outlives this
  const int round_;
  PrototypeAverage average_;
  std::set<std::string> seen_;  // clients whose update was folded in
  int64_t examples_ = 0;
  // key -> (Σ n_k · metric_k, Σ n_k) over updates with a finite numeric metric; std::map: the
  // output order does not depend on arrival.
  std::map<std::string, std::pair<double, double>> metric_sums_;
};

PrototypeServer::PrototypeServer(std::string name, PrototypeServerOptions options)
    : name_(std::move(name)), options_(options) {}

Status PrototypeServer::initialize(const RunContext& run, Rng& rng) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  FEDTAIL_RETURN_IF_ERROR(require_cross_entropy(run.config->local, name_));
  const ModelOptions& model = run.config->model;
  const int64_t classes = model.num_classes > 0 ? model.num_classes : run.num_classes;
  if (classes < 1) {
    return Status::InvalidArgument("config.model.num_classes: must be >= 1 (got " +
                                   std::to_string(classes) + "); fill it from the dataset");
  }
  Result<int> dim = common_feature_dim(model);
  // Its messages name "model.<field>": make the path the config's.
  if (!dim.ok()) return Status::InvalidArgument("config." + dim.status().message());
  num_classes_ = classes;
  feature_dim_ = *dim;
  global_ = PrototypeSet::empty(num_classes_, feature_dim_);
  global_round_ = 0;
  bundle_.reset();
  ready_ = true;
  Status extra = initialize_extra(run, rng);
  if (!extra.ok()) {
    ready_ = false;
    return extra;
  }
  return Status::OK();
}

Status PrototypeServer::check_ready() const {
  if (!ready_) {
    return Status::FailedPrecondition(name_ + ": not initialized (initialize or load_state first)");
  }
  return Status::OK();
}

Result<std::vector<TaskSpec>> PrototypeServer::tasks_for(
    const std::vector<ClientInfo>& chosen) const {
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  if (!bundle) return Status::Internal(name_ + ": cannot build the global bundle");
  std::vector<TaskSpec> tasks;
  tasks.reserve(chosen.size());
  for (const ClientInfo& c : chosen) {
    TaskSpec task;
    task.client_id = c.id;
    task.bundle = bundle;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<std::vector<TaskSpec>> PrototypeServer::configure_fit(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  (void)round;
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  FEDTAIL_ASSIGN_OR_RETURN(
      std::vector<ClientInfo> chosen,
      sample_clients(available, options_.round.fraction_fit, options_.round.min_fit_clients, rng));
  return tasks_for(chosen);
}

Result<std::unique_ptr<Aggregation>> PrototypeServer::begin_aggregation(int round) {
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  return std::unique_ptr<Aggregation>(std::make_unique<PrototypeAggregation>(this, round));
}

nlohmann::json PrototypeServer::finish_round(int round, const PrototypeAverage& average,
                                             const nlohmann::json& client_metrics, double loss,
                                             int64_t examples,
                                             const std::vector<ClientFailure>& failures) {
  nlohmann::json metrics = {{"updated", false},
                            {"updates", average.updates()},
                            {"failures", failures.size()},
                            {"examples", examples},
                            {"loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json()},
                            {"client_metrics", client_metrics}};
  const RoundOptions& r = options_.round;
  if (!r.accept_failures && !failures.empty()) {
    metrics["reason"] = std::to_string(failures.size()) +
                        " selected client(s) failed and accept_failures is false; the global "
                        "prototypes are kept";
    return metrics;
  }
  if (average.updates() < r.min_fit_clients) {
    metrics["reason"] = std::to_string(average.updates()) + " valid update(s), fewer than " +
                        "min_fit_clients = " + std::to_string(r.min_fit_clients) +
                        "; the global prototypes are kept";
    return metrics;
  }
  global_ = average.finish();
  global_round_ = round;
  on_global_prototypes(round, global_, &metrics);
  bundle_.reset();
  metrics["updated"] = true;
  metrics["classes"] = global_.num_present();
  metrics["prototype_distances"] = nearest_distances(global_).to_json();
  return metrics;
}

Result<std::vector<TaskSpec>> PrototypeServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  (void)round;
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  const RoundOptions& r = options_.round;
  if (r.fraction_evaluate == 0 && r.min_evaluate_clients == 0) return std::vector<TaskSpec>();
  FEDTAIL_ASSIGN_OR_RETURN(
      std::vector<ClientInfo> chosen,
      sample_clients(available, r.fraction_evaluate, r.min_evaluate_clients, rng));
  return tasks_for(chosen);
}

Result<nlohmann::json> PrototypeServer::aggregate_evaluate(
    int round, const std::vector<EvalReport>& reports, const std::vector<ClientFailure>& failures) {
  (void)round;
  return aggregate_prototype_evaluation(reports, failures);
}

Result<nlohmann::json> PrototypeServer::evaluate(int round, const ServerEvalContext& context) {
  (void)round;
  (void)context;
  return nlohmann::json::object();
}

std::shared_ptr<const TensorBundle> PrototypeServer::global_bundle() const {
  if (!ready_) return nullptr;
  if (!bundle_) {
    TensorBundle bundle;
    if (!add_prototype_tensors(global_, &bundle).ok() || !add_extra_tensors(&bundle).ok()) {
      return nullptr;
    }
    bundle.mutable_metadata() = {{"strategy", name_}, {"round", global_round_}};
    bundle_ = std::make_shared<const TensorBundle>(std::move(bundle));
  }
  return bundle_;
}

Result<TensorBundle> PrototypeServer::save_state() const {
  FEDTAIL_RETURN_IF_ERROR(check_ready());
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  if (!bundle) return Status::Internal(name_ + ": cannot build the global bundle");
  TensorBundle state = bundle->clone();
  state.mutable_metadata() = {{"strategy", name_},
                              {"format", kStateFormat},
                              {"num_classes", num_classes_},
                              {"feature_dim", feature_dim_},
                              {"global_metadata", bundle->metadata()}};
  return state;
}

Status PrototypeServer::load_state(TensorBundle state) {
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
  auto positive = [&](const char* key) {
    return meta.contains(key) && meta[key].is_number_integer() && meta[key].get<int64_t>() >= 1;
  };
  if (!positive("num_classes") || !positive("feature_dim") || !meta.contains("global_metadata") ||
      !meta["global_metadata"].is_object() || !meta["global_metadata"].contains("round") ||
      !meta["global_metadata"]["round"].is_number_integer()) {
    return Status::InvalidArgument(
        where + ": metadata lacks num_classes, feature_dim or global_metadata.round");
  }
  const int64_t classes = meta["num_classes"].get<int64_t>();
  const int64_t dim = meta["feature_dim"].get<int64_t>();
  std::vector<std::string> names = {kPrototypesTensor, kCountsTensor};
  for (const std::string& n : extra_tensor_names()) names.push_back(n);
  FEDTAIL_RETURN_IF_ERROR(check_tensor_names(state, names, where));
  FEDTAIL_ASSIGN_OR_RETURN(PrototypeSet global, read_prototype_tensors(state, classes, dim, where));

  // check_extra_tensors reads the sizes through num_classes()/feature_dim(): set them for the
  // check, restore them if it fails.
  const bool was_ready = ready_;
  const int64_t old_classes = num_classes_, old_dim = feature_dim_;
  num_classes_ = classes;
  feature_dim_ = dim;
  Status extra = check_extra_tensors(state);
  if (!extra.ok()) {
    num_classes_ = old_classes;
    feature_dim_ = old_dim;
    ready_ = was_ready;
    return extra;
  }
  install_extra_tensors(state);
  global_ = std::move(global);
  global_round_ = meta["global_metadata"]["round"].get<int>();
  bundle_.reset();
  ready_ = true;
  return Status::OK();
}

Status PrototypeServer::initialize_extra(const RunContext& run, Rng& rng) {
  (void)run;
  (void)rng;
  return Status::OK();
}

std::vector<std::string> PrototypeServer::extra_tensor_names() const { return {}; }

Status PrototypeServer::add_extra_tensors(TensorBundle* bundle) const {
  (void)bundle;
  return Status::OK();
}

Status PrototypeServer::check_extra_tensors(const TensorBundle& state) const {
  (void)state;
  return Status::OK();
}

void PrototypeServer::install_extra_tensors(const TensorBundle& state) { (void)state; }

void PrototypeServer::on_global_prototypes(int round, const PrototypeSet& global,
                                           nlohmann::json* metrics) {
  (void)round;
  (void)global;
  (void)metrics;
}

nlohmann::json aggregate_prototype_evaluation(const std::vector<EvalReport>& reports,
                                              const std::vector<ClientFailure>& failures) {
  nlohmann::json out = aggregate_personalized_accuracy(reports, failures);
  std::vector<EvalReport> head;
  head.reserve(reports.size());
  int64_t without_prototypes = 0;
  for (const EvalReport& r : reports) {
    EvalReport h;
    h.client_id = r.client_id;
    h.num_examples = r.num_examples;
    if (r.metrics.is_object() && r.metrics.contains("head") && r.metrics["head"].is_object()) {
      h.metrics = r.metrics["head"];
    }
    if (r.metrics.is_object() && r.metrics.contains("global_prototypes") &&
        r.metrics["global_prototypes"].is_number_integer() &&
        r.metrics["global_prototypes"].get<int64_t>() == 0) {
      ++without_prototypes;
    }
    head.push_back(std::move(h));
  }
  out["personalized_head"] = aggregate_personalized_accuracy(head, {})["personalized"];
  out["rule"] = "nearest_global_prototype";
  out["reports_without_prototypes"] = without_prototypes;
  return out;
}

}  // namespace fedtail::strategies
