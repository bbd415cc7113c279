#include "strategies/qfedavg/qfedavg.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/classification_loss.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/dtype.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedprox/fedprox.h"
#include "strategies/robust_aggregation.h"

namespace fedtail::strategies {

namespace {

std::string number(double value) { return nlohmann::json(value).dump(); }

// The names of the trainable parameters of the model `options` describes.
Result<std::vector<std::string>> parameter_names(const ModelOptions& options) {
  try {
    Rng rng(0);  // the weights are not used
    FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(options, rng));
    std::vector<std::string> names;
    for (const auto& p : model->named_parameters(/*recurse=*/true)) {
      if (p.value().requires_grad()) names.push_back(p.key());
    }
    return names;
  } catch (const std::exception& e) {
    return torch_failure("qfedavg: listing the model's parameters", e);
  }
}

// kInvalidArgument unless every name is a floating-point tensor of `global`.
Status check_norm_names(const std::vector<std::string>& names, const TensorBundle& global,
                        const std::string& where) {
  for (const std::string& name : names) {
    const NamedTensor* t = global.find(name);
    if (t == nullptr || !dtype_is_floating(t->dtype())) {
      return Status::InvalidArgument(where + ": parameter \"" + name +
                                     "\" is not a floating-point tensor of the global model");
    }
  }
  return Status::OK();
}

// Splits an upload into the model (moved out of `bundle`) and F_k.
struct Upload {
  TensorBundle model;
  double loss = 0;
};

Result<Upload> split_upload(TensorBundle bundle) {
  const std::string where = std::string("tensor \"") + kQFedAvgLossTensor + "\"";
  const NamedTensor* t = bundle.find(kQFedAvgLossTensor);
  if (t == nullptr) {
    return Status::InvalidArgument(where +
                                   ": missing (a qfedavg update carries the client's loss F_k "
                                   "of the global model)");
  }
  if (t->dtype() != DType::kFloat64 || t->shape() != std::vector<int64_t>{1}) {
    return Status::InvalidArgument(where + ": expected float64 [1], got " + dtype_name(t->dtype()) +
                                   " " + shape_to_string(t->shape()));
  }
  Upload upload;
  upload.loss = t->data<double>()[0];
  if (!std::isfinite(upload.loss) || upload.loss < 0) {
    return Status::InvalidArgument(where + ": F_k must be finite and >= 0 (got " +
                                   number(upload.loss) + ")");
  }
  for (NamedTensor& tensor : bundle) {
    if (tensor.name() == kQFedAvgLossTensor) continue;
    FEDTAIL_RETURN_IF_ERROR(upload.model.add(std::move(tensor)));
  }
  return upload;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<QFedAvgOptions> parse_qfedavg_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  QFedAvgOptions options;
  read_round_options(reader, &options.round);
  reader.check(!options.round.robust.enabled(), "robust",
               "qfedavg combines the models by the q-FFL rule, not by a mean: robust aggregation "
               "is not supported");
  reader.read("q", &options.q);
  reader.check(std::isfinite(options.q) && options.q >= 0, "q",
               "must be >= 0 (got " + number(options.q) + ")");
  if (reader.has("lipschitz")) {
    reader.read("lipschitz", &options.lipschitz);
    reader.check(std::isfinite(options.lipschitz) && options.lipschitz > 0, "lipschitz",
                 "must be > 0 (got " + number(options.lipschitz) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

// ---------------------------------------------------------------------------------------------
// Aggregation

// Takes F_k out of each update, computes its q-FFL terms, hands the model part to FedAvg's
// Aggregation and, once that has accepted it, folds the terms into the QfflSum (so that an update
// FedAvg refuses leaves no trace in the sums); finish() gives next_global the QfflSum.
class QFedAvgAggregation final : public Aggregation {
 public:
  QFedAvgAggregation(QFedAvgServer* server, QfflSum sum, std::unique_ptr<Aggregation> fedavg)
      : server_(server), sum_(std::move(sum)), fedavg_(std::move(fedavg)) {}

  Status add(ClientUpdate update) override {
    FEDTAIL_ASSIGN_OR_RETURN(Upload upload, split_upload(std::move(update.bundle)));
    // What FedAvg's Aggregation would do to its copy, done first so that the QfflSum sees the
    // same model (it then finds nothing to clamp).
    const int64_t clamped = sanitize_batchnorm(&upload.model);
    ClientUpdate model_part;
    model_part.client_id = std::move(update.client_id);
    model_part.num_examples = update.num_examples;
    model_part.metrics = std::move(update.metrics);
    // Called by QfflSum::add once its checks have passed and before it folds anything: FedAvg
    // takes a copy (the QfflSum reads upload.model after this) and applies its own rules.
    const auto fedavg_accepts = [this, &upload, &model_part]() {
      model_part.bundle = upload.model.clone();
      return fedavg_->add(std::move(model_part));
    };
    FEDTAIL_ASSIGN_OR_RETURN(QfflTerms terms, sum_.add(upload.model, upload.loss, fedavg_accepts));
    clamped_ += clamped;
    loss_sum_ += terms.loss;
    loss_min_ = std::min(loss_min_, terms.loss);
    loss_max_ = std::max(loss_max_, terms.loss);
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    server_->round_sum_ = &sum_;
    server_->round_clamped_ = 0;
    Result<nlohmann::json> metrics = fedavg_->finish(failures);
    const int64_t next_clamped = server_->round_clamped_;
    server_->round_sum_ = nullptr;
    server_->round_clamped_ = 0;
    if (!metrics.ok()) return metrics;
    const int64_t updates = sum_.updates();
    nlohmann::json global_loss;  // null without updates
    if (updates > 0) {
      global_loss = {{"mean", loss_sum_ / static_cast<double>(updates)},
                     {"min", loss_min_},
                     {"max", loss_max_}};
    }
    const double step =
        sum_.h_sum() > 0 ? sum_.lipschitz() * sum_.weight_sum() / sum_.h_sum() : 0.0;
    (*metrics)["qfedavg"] = {{"q", sum_.q()},
                             {"lipschitz", sum_.lipschitz()},
                             {"global_loss", global_loss},
                             {"weight_sum", sum_.weight_sum()},
                             {"h_sum", sum_.h_sum()},
                             {"step", step},
                             {"batchnorm_variances_clamped", clamped_ + next_clamped}};
    return metrics;
  }

 private:
  QFedAvgServer* const server_;  // borrowed; outlives this
  QfflSum sum_;
  std::unique_ptr<Aggregation> fedavg_;
  int64_t clamped_ = 0;  // running variances clamped in the accepted updates
  double loss_sum_ = 0;  // Σ F_k over the accepted updates
  double loss_min_ = std::numeric_limits<double>::infinity();
  double loss_max_ = -std::numeric_limits<double>::infinity();
};

// ---------------------------------------------------------------------------------------------
// Server

QFedAvgServer::QFedAvgServer(const QFedAvgOptions& options)
    : FedAvgServer("qfedavg", options.round), options_(options) {}

Status QFedAvgServer::initialize(const RunContext& run, Rng& rng) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<std::string> names, parameter_names(model_options));
  const double lipschitz = options_.lipschitz > 0 ? options_.lipschitz : 1.0 / run.config->local.lr;
  if (!std::isfinite(lipschitz) || lipschitz <= 0) {
    return Status::InvalidArgument(
        "config.local.lr: qfedavg's default L = 1 / lr must be > 0 "
        "(got 1 / " +
        number(run.config->local.lr) + "); set config.strategy.lipschitz");
  }
  // The global model is built from the same options, so it holds these parameters.
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  lipschitz_ = lipschitz;
  norm_names_ = std::move(names);
  expected_for_.reset();
  expected_.reset();
  return Status::OK();
}

Result<std::vector<TaskSpec>> QFedAvgServer::configure_fit(int round,
                                                           const std::vector<ClientInfo>& available,
                                                           Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  if (tasks.empty()) return tasks;
  const std::shared_ptr<const TensorBundle> global = global_bundle();
  if (expected_for_.lock() != global) {
    // Only the names, dtypes and shapes are read: zeros.
    TensorBundle expected;
    for (const NamedTensor& t : *global) {
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor zeros,
                               NamedTensor::zeros(t.name(), t.dtype(), t.shape()));
      FEDTAIL_RETURN_IF_ERROR(expected.add(std::move(zeros)));
    }
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor loss,
                             NamedTensor::zeros(kQFedAvgLossTensor, DType::kFloat64, {1}));
    FEDTAIL_RETURN_IF_ERROR(expected.add(std::move(loss)));
    expected_ = std::make_shared<const TensorBundle>(std::move(expected));
    expected_for_ = global;
  }
  for (TaskSpec& task : tasks) task.expected_update = expected_;
  return tasks;
}

Result<std::unique_ptr<Aggregation>> QFedAvgServer::begin_aggregation(int round) {
  const std::shared_ptr<const TensorBundle> global = global_bundle();
  if (!global || lipschitz_ <= 0) {
    return Status::FailedPrecondition("qfedavg: no global model (initialize or load_state first)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(QfflSum sum,
                           QfflSum::create(global, norm_names_, options_.q, lipschitz_));
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  return std::unique_ptr<Aggregation>(
      std::make_unique<QFedAvgAggregation>(this, std::move(sum), std::move(fedavg)));
}

Result<TensorBundle> QFedAvgServer::next_global(int round, TensorBundle average) {
  (void)round;
  (void)average;  // FedAvg's weighted mean: not the q-FFL rule
  if (round_sum_ == nullptr) {
    return Status::Internal("qfedavg: next_global outside a q-FedAvg aggregation");
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle next, round_sum_->finish());
  // w' is a convex combination of w and the (clamped) w̄_k: only rounding can make a running
  // variance negative.
  round_clamped_ += sanitize_batchnorm(&next);
  return next;
}

Status QFedAvgServer::save_extra_state(TensorBundle* state) const {
  if (lipschitz_ <= 0) return Status::FailedPrecondition("qfedavg: L is not set");
  state->mutable_metadata()["qfedavg"] = {{"lipschitz", lipschitz_}};
  return Status::OK();
}

Status QFedAvgServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                       const TensorBundle& global) {
  const std::string where = "qfedavg state";
  if (!extra.empty()) {
    return Status::InvalidArgument(where + ": unexpected tensor \"" + extra.at(0).name() + "\"");
  }
  if (!metadata.contains("qfedavg") || !metadata["qfedavg"].is_object()) {
    return Status::InvalidArgument(where + ": the metadata has no \"qfedavg\" object");
  }
  JsonReader reader(metadata["qfedavg"], "state.qfedavg");
  double lipschitz = 0;
  reader.read_required("lipschitz", &lipschitz);
  reader.check(std::isfinite(lipschitz) && lipschitz > 0, "lipschitz",
               "must be > 0 (got " + number(lipschitz) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  // The base has checked that "model" exists and parses.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<std::string> names, parameter_names(model_options));
  FEDTAIL_RETURN_IF_ERROR(check_norm_names(names, global, where));
  lipschitz_ = lipschitz;
  norm_names_ = std::move(names);
  expected_for_.reset();
  expected_.reset();
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<double> qfedavg_global_loss(ClientContext& context) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr) {
    return Status::InvalidArgument("qfedavg client: the context of client " + context.client_id +
                                   " lacks a model, config or training data");
  }
  Model& model = *context.model;
  FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss loss, client_loss(context));
  try {
    torch::nn::Linear head = model->head(kClassifierHead);
    FEDTAIL_ASSIGN_OR_RETURN(
        torch::Tensor logits,
        predict_logits(
            model, *context.train,
            [head](const torch::Tensor& features) mutable { return head->forward(features); },
            context.config->local.augment, context.device, context.config->eval.batch_size));
    torch::NoGradGuard no_grad;
    const torch::Tensor labels = context.train->labels.to(context.device);
    return loss(logits.to(context.device), labels).item<double>();
  } catch (const std::exception& e) {
    return torch_failure("qfedavg client: the loss of the global model", e);
  }
}

Result<FitOutput> QFedAvgClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr) {
    return Status::InvalidArgument("qfedavg client fit: the context of client " +
                                   context.client_id + " lacks a model, data, config or rng");
  }
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(**context.model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(double loss, qfedavg_global_loss(context));
    if (!std::isfinite(loss) || loss < 0) {
      return Status::Internal("qfedavg client " + context.client_id +
                              ": the loss of the global model on the training data is " +
                              number(loss));
    }
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats, train(context));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(**context.model));
    FEDTAIL_RETURN_IF_ERROR(out.update.add(
        NamedTensor::from_values<double>(kQFedAvgLossTensor, DType::kFloat64, {1}, {loss})));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss}, {"steps", stats.steps}, {"global_loss", loss}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("qfedavg client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_qfedavg_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(QFedAvgOptions options, parse_qfedavg_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<QFedAvgServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_qfedavg_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_qfedavg_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<QFedAvgClient>());
}

StrategyEntry qfedavg_strategy_entry() {
  return {"qfedavg",
          "q-FedAvg: fair FL, clients weighted by their loss to the power q with a "
          "Lipschitz-estimated step (Li et al. 2020)",
          make_qfedavg_server, make_qfedavg_client};
}

}  // namespace fedtail::strategies
