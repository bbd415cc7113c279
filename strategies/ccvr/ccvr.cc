#include "strategies/ccvr/ccvr.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {

namespace {

// The classifier head's tensors, and the prefix of the calibrated copy's in a saved state.
const std::string kClassifierWeight = std::string("heads.") + kClassifierHead + ".weight";
const std::string kClassifierBias = std::string("heads.") + kClassifierHead + ".bias";
constexpr char kCalibratedPrefix[] = "calibrated/";

std::string number(double value) { return nlohmann::json(value).dump(); }

// Copies the bytes of `value` into bundle tensor `name`, which must have its dtype and shape.
Status overwrite(TensorBundle* bundle, const std::string& name, const NamedTensor& value) {
  NamedTensor* target = bundle->find(name);
  if (target == nullptr || target->dtype() != value.dtype() || target->shape() != value.shape()) {
    return Status::InvalidArgument("tensor \"" + value.name() + "\": " + dtype_name(value.dtype()) +
                                   " " + shape_to_string(value.shape()) + " does not fit \"" +
                                   name + "\" of the global model");
  }
  std::copy(value.bytes(), value.bytes() + value.nbytes(), target->mutable_bytes());
  return Status::OK();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<CcvrOptions> parse_ccvr_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  CcvrOptions options;
  read_round_options(reader, &options.round);
  reader.read("calibrate_every", &options.calibrate_every);
  reader.check(options.calibrate_every != 1, "calibrate_every",
               "must be 0 or >= 2 (got 1: every round would be a statistics round and no round "
               "would train)");
  reader.check(options.calibrate_every >= 0, "calibrate_every",
               "must be 0 or >= 2 (got " + std::to_string(options.calibrate_every) + ")");
  reader.read("samples_per_class", &options.samples_per_class);
  reader.check(options.samples_per_class >= 1, "samples_per_class",
               "must be >= 1 (got " + std::to_string(options.samples_per_class) + ")");
  reader.read("calibration_epochs", &options.calibration_epochs);
  reader.check(options.calibration_epochs >= 1, "calibration_epochs",
               "must be >= 1 (got " + std::to_string(options.calibration_epochs) + ")");
  // Absent (or null) keeps 0, "take it from config.local"; a given value must be valid.
  const bool lr_given = reader.has("calibration_lr");
  reader.read("calibration_lr", &options.calibration_lr);
  if (lr_given) {
    reader.check(std::isfinite(options.calibration_lr) && options.calibration_lr > 0,
                 "calibration_lr", "must be > 0 (got " + number(options.calibration_lr) + ")");
  }
  const bool batch_given = reader.has("calibration_batch_size");
  reader.read("calibration_batch_size", &options.calibration_batch_size);
  if (batch_given) {
    reader.check(options.calibration_batch_size >= 1, "calibration_batch_size",
                 "must be >= 1 (got " + std::to_string(options.calibration_batch_size) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

// ---------------------------------------------------------------------------------------------
// Calibration

Result<CalibrationResult> calibrate_classifier(const torch::Tensor& weight,
                                               const torch::Tensor& bias,
                                               const torch::Tensor& features,
                                               const torch::Tensor& labels,
                                               const CalibrationOptions& options, Rng& rng) {
  if (!std::isfinite(options.lr) || options.lr <= 0 || options.epochs < 1 ||
      options.batch_size < 1) {
    return Status::InvalidArgument(
        "calibrate_classifier: lr must be > 0, epochs and batch_size >= "
        "1 (got lr " +
        number(options.lr) + ", epochs " + std::to_string(options.epochs) + ", batch_size " +
        std::to_string(options.batch_size) + ")");
  }
  try {
    if (!weight.defined() || weight.dim() != 2 || !features.defined() || features.dim() != 2 ||
        features.size(1) != weight.size(1) || !labels.defined() || labels.dim() != 1 ||
        labels.size(0) != features.size(0) ||
        (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0)))) {
      return Status::InvalidArgument(
          "calibrate_classifier: expected weight K×d, bias K (or none), features N×d, labels N");
    }
    const int64_t k = weight.size(0);
    const int64_t n = features.size(0);
    // Fresh leaves on the CPU: the caller's tensors are never modified.
    torch::Tensor w = weight.detach().to(torch::kCPU, torch::kFloat32).clone();
    torch::Tensor b;
    if (bias.defined()) b = bias.detach().to(torch::kCPU, torch::kFloat32).clone();
    const torch::Tensor x = features.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    const torch::Tensor y = labels.to(torch::kCPU, torch::kInt64).contiguous();
    if (n > 0 && (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= k)) {
      return Status::InvalidArgument("calibrate_classifier: a label is outside [0, " +
                                     std::to_string(k) + ")");
    }
    w.set_requires_grad(true);
    std::vector<torch::Tensor> params = {w};
    if (b.defined()) {
      b.set_requires_grad(true);
      params.push_back(b);
    }

    CalibrationResult result;
    torch::Tensor loss_sum = torch::zeros({}, torch::kFloat64);  // Σ batch size · batch loss
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      rng.shuffle(order);
      const torch::Tensor permutation = torch::tensor(order, torch::kInt64);
      for (int64_t start = 0; start < n; start += options.batch_size) {
        const int64_t len = std::min<int64_t>(options.batch_size, n - start);
        const torch::Tensor rows = permutation.narrow(0, start, len);
        const torch::Tensor xb = x.index_select(0, rows);
        const torch::Tensor yb = y.index_select(0, rows);
        const torch::Tensor logits = b.defined() ? torch::addmm(b, xb, w.t()) : xb.mm(w.t());
        const torch::Tensor loss = torch::nn::functional::cross_entropy(logits, yb);
        const std::vector<torch::Tensor> grads = torch::autograd::grad({loss}, params);
        {
          torch::NoGradGuard no_grad;
          for (size_t p = 0; p < params.size(); ++p) params[p].sub_(grads[p], options.lr);
          loss_sum += loss.detach().to(torch::kFloat64) * static_cast<double>(len);
        }
        ++result.steps;
      }
    }
    const double examples = static_cast<double>(n) * options.epochs;
    result.mean_loss = n > 0 ? loss_sum.item<double>() / examples : 0.0;
    if (!std::isfinite(result.mean_loss)) {
      return Status::Internal("calibrate_classifier: the loss is not finite (" +
                              number(result.mean_loss) + ")");
    }
    result.weight = w.detach();
    if (b.defined()) result.bias = b.detach();
    return result;
  } catch (const std::exception& e) {
    return torch_failure("calibrate_classifier", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Aggregations

// A statistics round: every update is checked and folded into the pool as it arrives.
class CcvrStatisticsAggregation final : public Aggregation {
 public:
  CcvrStatisticsAggregation(CcvrServer* server, int round, GaussianPool pool)
      : server_(server), round_(round), pool_(std::move(pool)) {}

  Status add(ClientUpdate update) override {
    if (seen_.count(update.client_id) != 0) {
      return Status::InvalidArgument("client " + update.client_id +
                                     " sent a second update this round");
    }
    FEDTAIL_RETURN_IF_ERROR(pool_.add(update.bundle, update.num_examples));
    seen_.insert(update.client_id);
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    return server_->finish_statistics(round_, pool_, failures);
  }

 private:
  CcvrServer* const server_;  // borrowed; outlives this
  const int round_;
  GaussianPool pool_;
  std::set<std::string> seen_;  // clients whose statistics were accepted
};

// A training round: FedAvg's aggregation; a new global model makes the calibrated copy stale.
class CcvrTrainingAggregation final : public Aggregation {
 public:
  CcvrTrainingAggregation(CcvrServer* server, std::unique_ptr<Aggregation> fedavg)
      : server_(server), fedavg_(std::move(fedavg)) {}

  Status add(ClientUpdate update) override { return fedavg_->add(std::move(update)); }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json metrics, fedavg_->finish(failures));
    if (metrics.value("updated", false)) server_->calibrated_.reset();
    metrics["calibrated"] = false;
    return metrics;
  }

 private:
  CcvrServer* const server_;  // borrowed; outlives this
  std::unique_ptr<Aggregation> fedavg_;
};

// ---------------------------------------------------------------------------------------------
// Server

CcvrServer::CcvrServer(const CcvrOptions& options)
    : FedAvgServer("ccvr", options.round), options_(options) {}

Status CcvrServer::initialize(const RunContext& run, Rng& rng) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  if (run.total_rounds < 1) {
    return Status::InvalidArgument("ccvr: the run must plan at least one round (got " +
                                   std::to_string(run.total_rounds) + ")");
  }
  const double lr = options_.calibration_lr > 0 ? options_.calibration_lr : run.config->local.lr;
  const int batch_size = options_.calibration_batch_size > 0 ? options_.calibration_batch_size
                                                             : run.config->local.batch_size;
  if (!std::isfinite(lr) || lr <= 0) {
    return Status::InvalidArgument("config.local.lr: must be > 0 for ccvr's calibration_lr (got " +
                                   number(lr) + ")");
  }
  if (batch_size < 1) {
    return Status::InvalidArgument(
        "config.local.batch_size: must be >= 1 for ccvr's calibration_batch_size (got " +
        std::to_string(batch_size) + ")");
  }
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  FEDTAIL_ASSIGN_OR_RETURN(model_options_, run_model_options(run));
  input_ = run.config->local.augment;
  total_rounds_ = run.total_rounds;
  seed_ = run.config->seed;
  calibration_lr_ = lr;
  calibration_batch_size_ = batch_size;
  calibrated_.reset();
  return Status::OK();
}

bool CcvrServer::is_statistics_round(int round) const {
  if (total_rounds_ < 1) return false;
  return round == total_rounds_ ||
         (options_.calibrate_every > 0 && round % options_.calibrate_every == 0);
}

Status CcvrServer::classifier_shape(int64_t* num_classes, int64_t* feature_dim) const {
  if (!FedAvgServer::global_bundle()) {
    return Status::FailedPrecondition("ccvr: no global model (initialize or load_state first)");
  }
  const NamedTensor* w = global().find(kClassifierWeight);
  if (w == nullptr || w->dtype() != DType::kFloat32 || w->dim() != 2) {
    return Status::FailedPrecondition("ccvr: the global model has no float32 2-D \"" +
                                      kClassifierWeight + "\"");
  }
  *num_classes = w->shape()[0];
  *feature_dim = w->shape()[1];
  return Status::OK();
}

Result<std::vector<TaskSpec>> CcvrServer::configure_fit(int round,
                                                        const std::vector<ClientInfo>& available,
                                                        Rng& rng) {
  if (!is_statistics_round(round)) return FedAvgServer::configure_fit(round, available, rng);
  std::shared_ptr<const TensorBundle> trained = FedAvgServer::global_bundle();
  if (!trained) {
    return Status::FailedPrecondition("ccvr: no global model (initialize or load_state first)");
  }
  const int min_clients = round_options().min_fit_clients;
  if (static_cast<int64_t>(available.size()) < min_clients) {
    return Status::FailedPrecondition(
        "ccvr: statistics round " + std::to_string(round) + " has " +
        std::to_string(available.size()) +
        " available client(s), fewer than min_fit_clients = " + std::to_string(min_clients));
  }
  std::vector<TaskSpec> tasks;
  tasks.reserve(available.size());
  for (const ClientInfo& c : available) {
    TaskSpec task;
    task.client_id = c.id;
    task.config = {{kCcvrTaskKey, kCcvrStatisticsTask}};
    task.bundle = trained;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<std::unique_ptr<Aggregation>> CcvrServer::begin_aggregation(int round) {
  if (!is_statistics_round(round)) {
    FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                             FedAvgServer::begin_aggregation(round));
    return std::unique_ptr<Aggregation>(
        std::make_unique<CcvrTrainingAggregation>(this, std::move(fedavg)));
  }
  int64_t num_classes = 0;
  int64_t feature_dim = 0;
  FEDTAIL_RETURN_IF_ERROR(classifier_shape(&num_classes, &feature_dim));
  FEDTAIL_ASSIGN_OR_RETURN(GaussianPool pool, GaussianPool::create(num_classes, feature_dim));
  return std::unique_ptr<Aggregation>(
      std::make_unique<CcvrStatisticsAggregation>(this, round, std::move(pool)));
}

Result<nlohmann::json> CcvrServer::finish_statistics(int round, const GaussianPool& pool,
                                                     const std::vector<ClientFailure>& failures) {
  nlohmann::json metrics = {{"updated", false},
                            {"calibrated", false},
                            {"updates", pool.updates()},
                            {"failures", failures.size()},
                            {"examples", pool.total_examples()},
                            {"classes_calibrated", 0},
                            {"virtual_features", 0},
                            {"calibration_loss", nullptr},
                            {"calibration_steps", 0},
                            {"jittered_classes", 0},
                            {"eigen_classes", 0}};
  const RoundOptions& round_options = this->round_options();
  if (!round_options.accept_failures && !failures.empty()) {
    metrics["reason"] = std::to_string(failures.size()) +
                        " selected client(s) failed and accept_failures is false; the models are "
                        "kept";
    return metrics;
  }
  if (pool.updates() < round_options.min_fit_clients) {
    metrics["reason"] = std::to_string(pool.updates()) + " valid update(s), fewer than " +
                        "min_fit_clients = " + std::to_string(round_options.min_fit_clients) +
                        "; the models are kept";
    return metrics;
  }

  // Virtual features, class by class in class order, from one stream for the round.
  Rng sample_rng = Rng::derive(seed_, "ccvr-sample", {static_cast<uint64_t>(round)});
  std::vector<torch::Tensor> features, labels;
  int64_t jittered = 0, eigen = 0;
  try {
    for (int64_t c = 0; c < pool.num_classes(); ++c) {
      const ClassGaussian g = pool.gaussian(c);
      if (g.count < 2) continue;  // no covariance: no virtual features
      Result<GaussianSample> sample =
          sample_gaussian(g.mean, g.cov, options_.samples_per_class, sample_rng);
      if (!sample.ok()) return sample.status().with_context("ccvr: class " + std::to_string(c));
      if (sample->factor == CovFactor::kJitteredCholesky) ++jittered;
      if (sample->factor == CovFactor::kEigen) ++eigen;
      labels.push_back(torch::full({sample->features.size(0)}, c, torch::kInt64));
      features.push_back(std::move(sample->features));
    }
  } catch (const std::exception& e) {
    return torch_failure("ccvr: sampling virtual features", e);
  }
  if (features.empty()) {
    metrics["reason"] =
        "no class has 2 or more examples in the pooled statistics; the models "
        "are kept";
    return metrics;
  }

  try {
    const torch::Tensor x = torch::cat(features, /*dim=*/0);
    const torch::Tensor y = torch::cat(labels, /*dim=*/0);
    const TensorBundle& trained = global();
    const NamedTensor* bias = trained.find(kClassifierBias);
    CalibrationOptions calibration;
    calibration.lr = calibration_lr_;
    calibration.epochs = options_.calibration_epochs;
    calibration.batch_size = calibration_batch_size_;
    Rng train_rng = Rng::derive(seed_, "ccvr-calibrate", {static_cast<uint64_t>(round)});
    FEDTAIL_ASSIGN_OR_RETURN(
        CalibrationResult result,
        calibrate_classifier(to_torch(*trained.find(kClassifierWeight)),
                             bias != nullptr ? to_torch(*bias) : torch::Tensor(), x, y, calibration,
                             train_rng));

    TensorBundle copy = trained.clone();
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor weight, from_torch(kClassifierWeight, result.weight));
    FEDTAIL_RETURN_IF_ERROR(overwrite(&copy, kClassifierWeight, weight));
    if (bias != nullptr) {
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor new_bias, from_torch(kClassifierBias, result.bias));
      FEDTAIL_RETURN_IF_ERROR(overwrite(&copy, kClassifierBias, new_bias));
    }
    nlohmann::json metadata = trained.metadata();
    metadata["calibrated_round"] = round;
    FEDTAIL_RETURN_IF_ERROR(copy.set_metadata(std::move(metadata)));
    calibrated_ = std::make_shared<const TensorBundle>(std::move(copy));

    metrics["updated"] = true;
    metrics["calibrated"] = true;
    metrics["classes_calibrated"] = features.size();
    metrics["virtual_features"] = x.size(0);
    metrics["calibration_loss"] = result.mean_loss;
    metrics["calibration_steps"] = result.steps;
    metrics["jittered_classes"] = jittered;
    metrics["eigen_classes"] = eigen;
    return metrics;
  } catch (const std::exception& e) {
    return torch_failure("ccvr: calibration", e);
  }
}

Result<std::vector<TaskSpec>> CcvrServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_evaluate(round, available, rng));
  if (calibrated_) {
    for (TaskSpec& task : tasks) task.bundle = calibrated_;
  }
  return tasks;
}

Result<nlohmann::json> CcvrServer::evaluate(int round, const ServerEvalContext& context) {
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json trained, FedAvgServer::evaluate(round, context));
  nlohmann::json out = trained;
  if (calibrated_) {
    FEDTAIL_ASSIGN_OR_RETURN(out,
                             evaluate_classifier(model_options_, input_, *calibrated_, context));
  }
  out["generic_uncalibrated"] = trained["generic"];
  out["generic_uncalibrated_by_count_rule"] = trained["generic_by_count_rule"];
  out["calibrated"] = calibrated_ != nullptr;
  return out;
}

std::shared_ptr<const TensorBundle> CcvrServer::global_bundle() const {
  return calibrated_ ? calibrated_ : FedAvgServer::global_bundle();
}

Status CcvrServer::save_extra_state(TensorBundle* state) const {
  state->mutable_metadata()["ccvr"] = {
      {"total_rounds", total_rounds_},
      {"seed", seed_},
      {"calibration_lr", calibration_lr_},
      {"calibration_batch_size", calibration_batch_size_},
      {"calibrated_metadata", calibrated_ ? calibrated_->metadata() : nlohmann::json()}};
  if (!calibrated_) return Status::OK();
  for (const std::string& name : {kClassifierWeight, kClassifierBias}) {
    const NamedTensor* t = calibrated_->find(name);
    if (t == nullptr) continue;  // a classifier without bias
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy, NamedTensor::uninitialized(kCalibratedPrefix + name,
                                                                          t->dtype(), t->shape()));
    std::copy(t->bytes(), t->bytes() + t->nbytes(), copy.mutable_bytes());
    FEDTAIL_RETURN_IF_ERROR(state->add(std::move(copy)));
  }
  return Status::OK();
}

Status CcvrServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                    const TensorBundle& global) {
  const std::string where = "ccvr state";
  if (!metadata.contains("ccvr") || !metadata["ccvr"].is_object()) {
    return Status::InvalidArgument(where + ": the metadata has no \"ccvr\" object");
  }
  JsonReader reader(metadata["ccvr"], "state.ccvr");
  int total_rounds = 0;
  uint64_t seed = 0;
  double lr = 0;
  int batch_size = 0;
  nlohmann::json calibrated_metadata;
  reader.read_required("total_rounds", &total_rounds);
  reader.read_required("seed", &seed);
  reader.read_required("calibration_lr", &lr);
  reader.read_required("calibration_batch_size", &batch_size);
  reader.read_raw("calibrated_metadata", &calibrated_metadata);
  reader.check(total_rounds >= 1, "total_rounds", "must be >= 1");
  reader.check(std::isfinite(lr) && lr > 0, "calibration_lr", "must be > 0");
  reader.check(batch_size >= 1, "calibration_batch_size", "must be >= 1");
  reader.check(calibrated_metadata.is_null() || calibrated_metadata.is_object(),
               "calibrated_metadata", "must be an object or null");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  // The base has checked that these exist and parse; evaluate() needs them here too.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions input,
                           parse_augment_options(metadata["input"], "state.input"));

  // The calibrated copy: the global model being loaded with the saved classifier.
  std::shared_ptr<const TensorBundle> calibrated;
  const std::string prefix = kCalibratedPrefix;
  for (const NamedTensor& t : extra) {
    const std::string name = t.name().compare(0, prefix.size(), prefix) == 0
                                 ? t.name().substr(prefix.size())
                                 : std::string();
    if ((name != kClassifierWeight && name != kClassifierBias) || calibrated_metadata.is_null()) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  if (calibrated_metadata.is_object()) {
    TensorBundle copy = global.clone();
    for (const std::string& name : {kClassifierWeight, kClassifierBias}) {
      const NamedTensor* saved = extra.find(prefix + name);
      const bool expected = global.contains(name);
      if (saved == nullptr && !expected) continue;
      if (saved == nullptr || !expected) {
        return Status::InvalidArgument(
            where + ": tensor \"" + prefix + name +
            "\": " + (saved == nullptr ? "missing" : "the global model has no " + name));
      }
      FEDTAIL_RETURN_IF_ERROR(overwrite(&copy, name, *saved).with_context(where));
    }
    FEDTAIL_RETURN_IF_ERROR(copy.set_metadata(calibrated_metadata));
    calibrated = std::make_shared<const TensorBundle>(std::move(copy));
  }

  model_options_ = model_options;
  input_ = std::move(input);
  total_rounds_ = total_rounds;
  seed_ = seed;
  calibration_lr_ = lr;
  calibration_batch_size_ = batch_size;
  calibrated_ = std::move(calibrated);
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<FitOutput> CcvrClient::fit(ClientContext& context, const TensorBundle& global) {
  const nlohmann::json& task = context.task_config;
  if (!task.is_object() || !task.contains(kCcvrTaskKey)) return FedAvgClient::fit(context, global);
  const nlohmann::json& kind = task[kCcvrTaskKey];
  if (!kind.is_string() || kind.get<std::string>() != kCcvrStatisticsTask) {
    return Status::InvalidArgument(std::string("ccvr client fit: task config \"") + kCcvrTaskKey +
                                   "\": expected \"" + kCcvrStatisticsTask + "\" (got " +
                                   kind.dump() + ")");
  }
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr) {
    return Status::InvalidArgument("ccvr client fit: the context of client " + context.client_id +
                                   " lacks a model, training data or config");
  }
  if (context.train->size() == 0) {
    return Status::FailedPrecondition("ccvr client fit: client " + context.client_id +
                                      " has no training data to compute feature statistics on");
  }
  Model& model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor features,
                             extract_features(model, *context.train, context.config->local.augment,
                                              context.device, context.config->eval.batch_size));
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle stats, class_statistics(features, context.train->labels,
                                                                  model->num_classes()));
    int64_t present = 0;
    const NamedTensor* counts = stats.find(kCcvrCountTensor);
    for (int64_t c = 0; c < counts->numel(); ++c) present += counts->data<int64_t>()[c] > 0;
    FitOutput out;
    out.update = std::move(stats);
    out.num_examples = context.train->size();
    out.metrics = {{"statistics", true}, {"classes", present}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("ccvr client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_ccvr_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(CcvrOptions options, parse_ccvr_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<CcvrServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_ccvr_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_ccvr_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<CcvrClient>());
}

StrategyEntry ccvr_strategy_entry() {
  return {"ccvr",
          "CCVR: FedAvg, then the classifier calibrated on virtual features sampled from the "
          "clients' pooled class Gaussians (Luo et al. 2021)",
          make_ccvr_server, make_ccvr_client};
}

}  // namespace fedtail::strategies
