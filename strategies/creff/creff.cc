// CReFF (creff.h): the options, the client's gradient upload and training, the server's round
// (FedAvg's aggregation beside the gradient pool), evaluation, state, and the registration. The
// federated features themselves are creff_features.cc.
#include "strategies/creff/creff.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/dtype.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {

namespace {

constexpr char kName[] = "creff";
// FedAvgServer's documented state format (fedavg.h: save_state), which initialize() builds.
constexpr int kFedAvgStateFormat = 1;
// The prefix of every CReFF tensor in a bundle (none of the model's starts with it).
constexpr char kCreffPrefix[] = "creff.";
const std::string kClassifierWeight = std::string("heads.") + kClassifierHead + ".weight";
const std::string kClassifierBias = std::string("heads.") + kClassifierHead + ".bias";

bool is_creff_tensor(const std::string& name) {
  return name.compare(0, std::strlen(kCreffPrefix), kCreffPrefix) == 0;
}

// "-1", "0.05", "inf": the value as a user would write it.
std::string format_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string spec(DType dtype, const std::vector<int64_t>& shape) {
  return std::string(dtype_name(dtype)) + " " + shape_to_string(shape);
}

// kInvalidArgument "<where>: tensor \"name\": ..." unless `bundle` holds `name` as float32 of
// `shape`.
Status check_float_tensor(const TensorBundle& bundle, const std::string& name,
                          const std::vector<int64_t>& shape, const std::string& where) {
  const NamedTensor* t = bundle.find(name);
  if (t == nullptr) {
    return Status::InvalidArgument(where + ": tensor \"" + name + "\": missing (expected " +
                                   spec(DType::kFloat32, shape) + ")");
  }
  if (t->dtype() != DType::kFloat32 || t->shape() != shape) {
    return Status::InvalidArgument(where + ": tensor \"" + name +
                                   "\": " + spec(t->dtype(), t->shape()) + " != expected " +
                                   spec(DType::kFloat32, shape));
  }
  return Status::OK();
}

// A copy of `t`'s bytes under `name`.
Result<NamedTensor> renamed_copy(const NamedTensor& t, const std::string& name) {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor copy,
                           NamedTensor::uninitialized(name, t.dtype(), t.shape()));
  if (t.nbytes() > 0) std::memcpy(copy.mutable_bytes(), t.bytes(), t.nbytes());
  return copy;
}

// Copies `value` (float32, the target's shape) into bundle tensor `name`.
Status overwrite(TensorBundle* bundle, const std::string& name, const torch::Tensor& value) {
  NamedTensor* target = bundle->find(name);
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor source, from_torch(name, value));
  if (target == nullptr || target->dtype() != source.dtype() || target->shape() != source.shape()) {
    return Status::Internal(std::string(kName) + ": cannot write " +
                            spec(source.dtype(), source.shape()) + " into tensor \"" + name + "\"");
  }
  std::memcpy(target->mutable_bytes(), source.bytes(), source.nbytes());
  return Status::OK();
}

// The global model's classifier: K and d. `where` prefixes the error.
Status classifier_shape(const TensorBundle& global, const std::string& where, int64_t* num_classes,
                        int64_t* feature_dim) {
  const NamedTensor* w = global.find(kClassifierWeight);
  if (w == nullptr || w->dtype() != DType::kFloat32 || w->dim() != 2) {
    return Status::InvalidArgument(where + ": no float32 2-D classifier tensor \"" +
                                   kClassifierWeight + "\"");
  }
  *num_classes = w->shape()[0];
  *feature_dim = w->shape()[1];
  return check_float_tensor(global, kClassifierBias, {*num_classes}, where);
}

// The model of a global bundle (the FedAvg model plus (W, b)) with (W, b) as its classifier, or,
// with `retrained` false, the FedAvg model as it is; without the creff.* tensors, with the global
// bundle's metadata.
Result<TensorBundle> model_of(const TensorBundle& global, bool retrained) {
  const NamedTensor* weight = global.find(kCreffClassifierWeight);
  const NamedTensor* bias = global.find(kCreffClassifierBias);
  if (weight == nullptr || bias == nullptr) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": the global bundle lacks the re-trained classifier");
  }
  TensorBundle out;
  for (const NamedTensor& t : global) {
    if (is_creff_tensor(t.name())) continue;
    if (retrained && t.name() == kClassifierWeight) {
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor w, renamed_copy(*weight, kClassifierWeight));
      FEDTAIL_RETURN_IF_ERROR(out.add(std::move(w)));
    } else if (retrained && t.name() == kClassifierBias) {
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor b, renamed_copy(*bias, kClassifierBias));
      FEDTAIL_RETURN_IF_ERROR(out.add(std::move(b)));
    } else {
      FEDTAIL_RETURN_IF_ERROR(out.add(t.clone()));
    }
  }
  FEDTAIL_RETURN_IF_ERROR(out.set_metadata(global.metadata()));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Client helpers

struct SynClassifier {
  torch::Tensor weight;  // K×d
  torch::Tensor bias;    // K
};

// Loads the model's tensors of `global` into `model` and returns (W, b). `global` must hold
// exactly the model's parameters and buffers plus (W, b) shaped like the classifier;
// kInvalidArgument names the first tensor that is extra, missing or misshapen, and the model is
// then unchanged.
Result<SynClassifier> load_global(Model& model, const TensorBundle& global) {
  std::set<std::string> expected;
  for (const auto& p : model->named_parameters(/*recurse=*/true)) expected.insert(p.key());
  for (const auto& b : model->named_buffers(/*recurse=*/true)) expected.insert(b.key());
  for (const NamedTensor& t : global) {
    if (t.name() != kCreffClassifierWeight && t.name() != kCreffClassifierBias &&
        expected.count(t.name()) == 0) {
      return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                     "\": neither a tensor of this model nor CReFF's classifier");
    }
  }
  for (const std::string& name : expected) {
    if (!global.contains(name)) {
      return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
    }
  }
  const int64_t k = model->num_classes();
  const int64_t d = model->feature_dim();
  FEDTAIL_RETURN_IF_ERROR(
      check_float_tensor(global, kCreffClassifierWeight, {k, d}, "global model"));
  FEDTAIL_RETURN_IF_ERROR(check_float_tensor(global, kCreffClassifierBias, {k}, "global model"));
  FEDTAIL_RETURN_IF_ERROR(
      load_module_state(*model, global, /*strict=*/false).with_context("global model"));
  return SynClassifier{to_torch(*global.find(kCreffClassifierWeight)),
                       to_torch(*global.find(kCreffClassifierBias))};
}

// The gradient upload (creff.h, client step 1) of `model` (loaded, on `device`) with (W, b) in
// place of its classifier. The model's training mode is restored.
Result<TensorBundle> gradient_upload(Model& model, const SynClassifier& syn, const Dataset& data,
                                     const AugmentOptions& augment, torch::Device device,
                                     const CreffOptions& options, Rng& rng) {
  const int64_t k = model->num_classes();
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter,
                           Augmenter::create(augment, data.channels(), device));
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(k));
  const std::vector<int64_t> labels = data.label_vector();
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= k) {
      return Status::InvalidArgument("creff client: label " + std::to_string(labels[i]) +
                                     " is outside the model's [0, " + std::to_string(k) + ")");
    }
    rows[static_cast<size_t>(labels[i])].push_back(static_cast<int64_t>(i));
  }
  std::vector<int64_t> classes;
  for (int64_t c = 0; c < k; ++c) {
    if (!rows[static_cast<size_t>(c)].empty()) classes.push_back(c);
  }
  const int64_t m = static_cast<int64_t>(classes.size());
  const torch::Tensor weight = syn.weight.to(device);
  const torch::Tensor bias = syn.bias.to(device);
  const auto options_on_device = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  torch::Tensor weight_sum = torch::zeros({m, k, model->feature_dim()}, options_on_device);
  torch::Tensor bias_sum = torch::zeros({m, k}, options_on_device);

  const bool was_training = model->is_training();
  model->eval();  // BatchNorm normalises by its running statistics
  {
    // The gradients of (W, b) are in closed form: no autograd graph at all.
    torch::NoGradGuard no_grad;
    for (int repeat = 0; repeat < options.gradient_repeats; ++repeat) {
      for (int64_t i = 0; i < m; ++i) {
        const std::vector<int64_t>& of_class = rows[static_cast<size_t>(classes[i])];
        const int64_t n = static_cast<int64_t>(of_class.size());
        const std::vector<int64_t> picks =
            rng.sample_without_replacement(n, std::min<int64_t>(n, options.gradient_batch));
        std::vector<int64_t> indices;
        indices.reserve(picks.size());
        for (int64_t p : picks) indices.push_back(of_class[static_cast<size_t>(p)]);
        const torch::Tensor images =
            data.images.index_select(0, torch::tensor(indices, torch::kInt64));
        const torch::Tensor features = model->features(augmenter.train_batch(images, rng));
        const torch::Tensor label = torch::full({1}, classes[i], torch::kInt64).to(device);
        auto [grad_weight, grad_bias] =
            class_classifier_gradients(features.unsqueeze(0), label, weight, bias);
        weight_sum[i].add_(grad_weight[0]);
        bias_sum[i].add_(grad_bias[0]);
      }
    }
  }
  model->train(was_training);
  const double repeats = static_cast<double>(options.gradient_repeats);
  TensorBundle out;
  FEDTAIL_RETURN_IF_ERROR(
      out.add(NamedTensor::from_values(kCreffClassesTensor, DType::kInt64, {m}, classes)));
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor w, from_torch(kCreffGradWeightTensor, weight_sum / repeats));
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor b, from_torch(kCreffGradBiasTensor, bias_sum / repeats));
  FEDTAIL_RETURN_IF_ERROR(out.add(std::move(w)));
  FEDTAIL_RETURN_IF_ERROR(out.add(std::move(b)));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<CreffOptions> parse_creff_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  CreffOptions o;
  read_round_options(reader, &o.round);
  auto at_least = [&](const char* key, int* value, int minimum) {
    reader.read(key, value);
    reader.check(*value >= minimum, key,
                 "must be >= " + std::to_string(minimum) + " (got " + std::to_string(*value) + ")");
  };
  auto positive = [&](const char* key, double* value) {
    reader.read(key, value);
    reader.check(std::isfinite(*value) && *value > 0, key,
                 "must be > 0 (got " + format_number(*value) + ")");
  };
  at_least("features_per_class", &o.features_per_class, 1);
  at_least("match_steps", &o.match_steps, 0);
  positive("feature_lr", &o.feature_lr);
  at_least("retrain_epochs", &o.retrain_epochs, 1);
  positive("retrain_lr", &o.retrain_lr);
  at_least("retrain_batch_size", &o.retrain_batch_size, 1);
  at_least("gradient_batch", &o.gradient_batch, 1);
  at_least("gradient_repeats", &o.gradient_repeats, 1);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

// ---------------------------------------------------------------------------------------------
// Aggregation

// Splits each update into its model state, folded by FedAvgServer's Aggregation (with the round's
// (W, b) added back, since the global bundle it checks against carries them; next_global
// overwrites their mean), and its gradients, folded into the pool.
class CreffAggregation final : public Aggregation {
 public:
  CreffAggregation(CreffServer* server, std::unique_ptr<Aggregation> fedavg, ClassGradientPool pool,
                   std::shared_ptr<const TensorBundle> global)
      : server_(server),
        fedavg_(std::move(fedavg)),
        pool_(std::move(pool)),
        global_(std::move(global)) {}

  Status add(ClientUpdate update) override {
    if (seen_.count(update.client_id) != 0) {
      return Status::InvalidArgument("client " + update.client_id +
                                     " sent a second update this round");
    }
    TensorBundle model;
    TensorBundle gradients;
    for (NamedTensor& t : update.bundle) {
      TensorBundle& into = is_creff_tensor(t.name()) ? gradients : model;
      FEDTAIL_RETURN_IF_ERROR(into.add(std::move(t)));
    }
    FEDTAIL_RETURN_IF_ERROR(pool_.check(gradients));
    for (const char* name : {kCreffClassifierWeight, kCreffClassifierBias}) {
      FEDTAIL_RETURN_IF_ERROR(model.add(global_->find(name)->clone()));
    }
    ClientUpdate model_update;
    model_update.client_id = update.client_id;
    model_update.num_examples = update.num_examples;
    model_update.bundle = std::move(model);
    model_update.metrics = std::move(update.metrics);
    FEDTAIL_RETURN_IF_ERROR(fedavg_->add(std::move(model_update)));
    // Checked above: only a LibTorch failure can refuse it now.
    FEDTAIL_RETURN_IF_ERROR(pool_.add(gradients));
    seen_.insert(update.client_id);
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    return server_->finish_round(*fedavg_, pool_, failures);
  }

 private:
  CreffServer* const server_;  // borrowed; outlives this
  std::unique_ptr<Aggregation> fedavg_;
  ClassGradientPool pool_;
  const std::shared_ptr<const TensorBundle> global_;  // the round's training bundle
  std::set<std::string> seen_;                        // clients whose update was accepted
};

// ---------------------------------------------------------------------------------------------
// Server

CreffServer::CreffServer(const CreffOptions& options)
    : FedAvgServer(kName, options.round), options_(options) {}

Status CreffServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(model_options, rng));
  const int64_t k = model->num_classes();
  const int64_t d = model->feature_dim();
  int64_t rows = 0;
  int64_t values = 0;
  if (__builtin_mul_overflow(k, static_cast<int64_t>(options_.features_per_class), &rows) ||
      __builtin_mul_overflow(rows, d, &values) ||
      values > std::numeric_limits<int64_t>::max() / 4) {
    return Status::InvalidArgument(
        "config.strategy.features_per_class: " + std::to_string(options_.features_per_class) +
        " features per class of " + std::to_string(d) + " values for " + std::to_string(k) +
        " classes are too many");
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, module_state(*model));
  Rng classifier_rng = Rng::derive(rng.next_u64(), "creff-classifier");
  Rng feature_rng = Rng::derive(rng.next_u64(), "creff-features");
  try {
    auto [weight, bias] = default_linear(k, d, classifier_rng);
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor w, from_torch(kCreffClassifierWeight, weight));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor b, from_torch(kCreffClassifierBias, bias));
    FEDTAIL_RETURN_IF_ERROR(state.add(std::move(w)));
    FEDTAIL_RETURN_IF_ERROR(state.add(std::move(b)));
  } catch (const std::exception& e) {
    return torch_failure("creff initialize", e);
  }
  FEDTAIL_ASSIGN_OR_RETURN(
      NamedTensor features,
      NamedTensor::uninitialized(kCreffFeaturesState, DType::kFloat32, {rows, d}));
  float* f = features.data<float>();
  for (int64_t i = 0; i < values; ++i) f[i] = static_cast<float>(feature_rng.normal());
  FEDTAIL_RETURN_IF_ERROR(state.add(std::move(features)));
  // The whole initial state, installed through load_state: one path for both starts.
  state.mutable_metadata() = {{"strategy", kName},
                              {"format", kFedAvgStateFormat},
                              {"model", model_options_to_json(model_options)},
                              {"input", augment_options_to_json(run.config->local.augment)},
                              {"global_metadata", {{"strategy", kName}, {"round", 0}}},
                              {"creff", {{"seed", run.config->seed}}}};
  return load_state(std::move(state));
}

Result<std::unique_ptr<Aggregation>> CreffServer::begin_aggregation(int round) {
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  const NamedTensor* weight = global().find(kCreffClassifierWeight);
  if (weight == nullptr || weight->dim() != 2 || !global().contains(kCreffClassifierBias)) {
    return Status::Internal(std::string(kName) + ": the global bundle lacks (W, b)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(ClassGradientPool pool,
                           ClassGradientPool::create(weight->shape()[0], weight->shape()[1]));
  return std::unique_ptr<Aggregation>(std::make_unique<CreffAggregation>(
      this, std::move(fedavg), std::move(pool), training_bundle()));
}

Result<nlohmann::json> CreffServer::finish_round(Aggregation& fedavg, const ClassGradientPool& pool,
                                                 const std::vector<ClientFailure>& failures) {
  round_pool_ = &pool;
  pending_.reset();
  Result<nlohmann::json> result = fedavg.finish(failures);
  round_pool_ = nullptr;
  std::optional<PendingRound> pending = std::move(pending_);
  pending_.reset();
  FEDTAIL_RETURN_IF_ERROR(result.status());
  nlohmann::json metrics = std::move(result).value();
  metrics["matched_classes"] = 0;
  metrics["match_distance_first"] = nullptr;
  metrics["match_distance_last"] = nullptr;
  metrics["retrain_loss"] = nullptr;
  metrics["retrain_steps"] = 0;
  if (!metrics.value("updated", false)) return metrics;
  if (!pending) {
    return Status::Internal(std::string(kName) + ": the round updated the model without CReFF's");
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle retrained, model_of(global(), /*retrained=*/true));
  features_ = std::move(pending->features);
  retrained_ = std::make_shared<const TensorBundle>(std::move(retrained));
  metrics.update(pending->metrics);
  return metrics;
}

Result<TensorBundle> CreffServer::next_global(int round, TensorBundle average) {
  if (round_pool_ == nullptr) {
    return Status::Internal(std::string(kName) + ": next_global outside a round's finish");
  }
  const TensorBundle& current = global();
  try {
    FEDTAIL_ASSIGN_OR_RETURN(ClassGradientPool::Means real, round_pool_->means());
    const torch::Tensor weight = to_torch(*current.find(kCreffClassifierWeight));
    const torch::Tensor bias = to_torch(*current.find(kCreffClassifierBias));
    const int64_t per_class = options_.features_per_class;
    FEDTAIL_ASSIGN_OR_RETURN(
        MatchResult matched,
        match_features(features_, per_class, real.classes, real.weight, real.bias, weight, bias,
                       options_.match_steps, options_.feature_lr));
    Rng rng = Rng::derive(seed_, "creff-retrain", {static_cast<uint64_t>(round)});
    FEDTAIL_ASSIGN_OR_RETURN(
        CalibrationResult retrained,
        retrain_classifier(matched.features, per_class, weight.size(0), options_, rng));
    FEDTAIL_RETURN_IF_ERROR(overwrite(&average, kCreffClassifierWeight, retrained.weight));
    FEDTAIL_RETURN_IF_ERROR(overwrite(&average, kCreffClassifierBias, retrained.bias));
    PendingRound pending;
    pending.features = std::move(matched.features);
    pending.metrics = {{"matched_classes", matched.matched_classes},
                       {"match_distance_first", matched.first_distance},
                       {"match_distance_last", matched.last_distance},
                       {"retrain_loss", retrained.mean_loss},
                       {"retrain_steps", retrained.steps}};
    pending_ = std::move(pending);
    return average;
  } catch (const std::exception& e) {
    return torch_failure("creff: feature matching and re-training", e);
  }
}

Result<std::vector<TaskSpec>> CreffServer::configure_fit(int round,
                                                         const std::vector<ClientInfo>& available,
                                                         Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  for (TaskSpec& task : tasks) task.expected_update.reset();
  return tasks;
}

Result<std::vector<TaskSpec>> CreffServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_evaluate(round, available, rng));
  for (TaskSpec& task : tasks) task.bundle = retrained_;
  return tasks;
}

Result<nlohmann::json> CreffServer::evaluate(int round, const ServerEvalContext& context) {
  (void)round;
  if (!retrained_) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": no global model (initialize or load_state first)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json out,
                           evaluate_classifier(model_options_, input_, *retrained_, context));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle fedavg, model_of(global(), /*retrained=*/false));
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json plain,
                           evaluate_classifier(model_options_, input_, fedavg, context));
  out["generic_fedavg"] = plain["generic"];
  out["generic_fedavg_by_count_rule"] = plain["generic_by_count_rule"];
  return out;
}

Status CreffServer::save_extra_state(TensorBundle* state) const {
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor features, from_torch(kCreffFeaturesState, features_));
  FEDTAIL_RETURN_IF_ERROR(state->add(std::move(features)));
  state->mutable_metadata()["creff"] = {{"seed", seed_}};
  return Status::OK();
}

Status CreffServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                     const TensorBundle& global) {
  const std::string where = std::string(kName) + " state";
  int64_t k = 0;
  int64_t d = 0;
  FEDTAIL_RETURN_IF_ERROR(classifier_shape(global, where, &k, &d));
  FEDTAIL_RETURN_IF_ERROR(check_float_tensor(global, kCreffClassifierWeight, {k, d}, where));
  FEDTAIL_RETURN_IF_ERROR(check_float_tensor(global, kCreffClassifierBias, {k}, where));
  for (const NamedTensor& t : global) {
    if (is_creff_tensor(t.name()) && t.name() != kCreffClassifierWeight &&
        t.name() != kCreffClassifierBias) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  for (const NamedTensor& t : extra) {
    if (t.name() != kCreffFeaturesState) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  const int64_t rows = k * options_.features_per_class;
  Status features_ok = check_float_tensor(extra, kCreffFeaturesState, {rows, d}, where);
  if (!features_ok.ok()) {
    return Status::InvalidArgument(features_ok.message() + " (" +
                                   std::to_string(options_.features_per_class) +
                                   " features_per_class)");
  }
  if (!metadata.contains("creff") || !metadata["creff"].is_object()) {
    return Status::InvalidArgument(where + ": the metadata has no \"creff\" object");
  }
  JsonReader reader(metadata["creff"], "state.creff");
  uint64_t seed = 0;
  reader.read_required("seed", &seed);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  // FedAvgServer::load_state has validated these already; evaluate() needs them here too.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions input,
                           parse_augment_options(metadata["input"], "state.input"));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle retrained, model_of(global, /*retrained=*/true));
  torch::Tensor features;
  try {
    for (NamedTensor& t : extra) features = to_torch(std::move(t));
  } catch (const std::exception& e) {
    return torch_failure(where, e);
  }

  model_options_ = model_options;
  input_ = std::move(input);
  seed_ = seed;
  features_ = std::move(features);
  retrained_ = std::make_shared<const TensorBundle>(std::move(retrained));
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<FitOutput> CreffClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr) {
    return Status::InvalidArgument("creff client fit: the context of client " + context.client_id +
                                   " lacks a model, data, config or rng");
  }
  if (context.train->size() == 0) {
    return Status::FailedPrecondition("creff client fit: client " + context.client_id +
                                      " has no training data");
  }
  Model& model = *context.model;
  try {
    FEDTAIL_ASSIGN_OR_RETURN(SynClassifier syn, load_global(model, global));
    model->to(context.device);
    // Its own stream, so that training then draws from the task's Rng as FedAvg's would after
    // one draw.
    Rng gradient_rng = Rng::derive(context.rng->next_u64(), "creff-gradients");
    FEDTAIL_ASSIGN_OR_RETURN(
        TensorBundle gradients,
        gradient_upload(model, syn, *context.train, context.config->local.augment, context.device,
                        options_, gradient_rng));
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats, train(context));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    const int64_t classes = gradients.find(kCreffClassesTensor)->numel();
    for (NamedTensor& t : gradients) FEDTAIL_RETURN_IF_ERROR(out.update.add(std::move(t)));
    out.num_examples = context.train->size();
    out.metrics = {
        {"loss", stats.mean_loss}, {"steps", stats.steps}, {"gradient_classes", classes}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("creff client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_creff_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(CreffOptions options, parse_creff_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<CreffServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_creff_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(CreffOptions options, parse_creff_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<CreffClient>(options));
}

StrategyEntry creff_strategy_entry() {
  return {"creff",
          "CReFF: FedAvg, plus a classifier re-trained every round on federated features matched "
          "to the clients' per-class classifier gradients (Shang et al. 2022)",
          make_creff_server, make_creff_client};
}

}  // namespace fedtail::strategies
