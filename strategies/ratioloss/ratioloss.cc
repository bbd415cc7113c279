#include "strategies/ratioloss/ratioloss.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/classification_loss.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/dtype.h"
#include "strategies/classifier_eval.h"
#include "strategies/local_layers.h"

namespace fedtail::strategies {

namespace {

const std::string kClassifierWeight = std::string("heads.") + kClassifierHead + ".weight";
// α in a saved state ('/': FedAvgServer hands it to load_extra_state).
constexpr char kStateAlpha[] = "ratioloss/alpha";

std::string number(double value) { return nlohmann::json(value).dump(); }

// The values of a CPU tensor as doubles, for metrics.
std::vector<double> to_doubles(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

std::vector<int64_t> to_ints(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// kInvalidArgument "<where>: ..." unless `t` is float32 [num_classes] with every value finite and
// > 0.
Status check_alpha(const NamedTensor& t, int64_t num_classes, const std::string& where) {
  if (t.dtype() != DType::kFloat32 || t.shape() != std::vector<int64_t>{num_classes}) {
    return Status::InvalidArgument(where + ": expected float32 [" + std::to_string(num_classes) +
                                   "] (one weight per class), got " + dtype_name(t.dtype()) + " " +
                                   shape_to_string(t.shape()));
  }
  const float* a = t.data<float>();
  for (int64_t c = 0; c < num_classes; ++c) {
    if (!std::isfinite(a[c]) || a[c] <= 0) {
      return Status::InvalidArgument(where + ": the weight of class " + std::to_string(c) + " is " +
                                     number(a[c]) + "; every weight must be finite and > 0");
    }
  }
  return Status::OK();
}

// Loads `bundle` into `model`: its tensors other than kRatioLossAlphaTensor must be exactly the
// model's. The model is unchanged on error.
Status load_global_model(Model& model, const TensorBundle& bundle) {
  const std::vector<std::string> names = state_names_except(model, {});
  const std::set<std::string> expected(names.begin(), names.end());
  for (const NamedTensor& t : bundle) {
    if (t.name() != kRatioLossAlphaTensor && expected.count(t.name()) == 0) {
      return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                     "\": not a tensor of this model");
    }
  }
  for (const std::string& name : names) {
    if (!bundle.contains(name)) {
      return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
    }
  }
  return load_module_state(*model, bundle, /*strict=*/false).with_context("global model");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<RatioLossOptions> parse_ratioloss_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  RatioLossOptions options;
  read_round_options(reader, &options.round);
  reader.read("alpha", &options.alpha);
  reader.check(std::isfinite(options.alpha) && options.alpha > 0, "alpha",
               "must be > 0 (got " + number(options.alpha) + ")");
  reader.read("beta", &options.beta);
  reader.check(std::isfinite(options.beta) && options.beta >= 0, "beta",
               "must be >= 0 (got " + number(options.beta) + ")");
  reader.read("dominance", &options.dominance);
  reader.check(options.dominance > 0 && options.dominance <= 1, "dominance",
               "must be in (0, 1] (got " + number(options.dominance) + ")");
  reader.read("max_ratio", &options.max_ratio);
  reader.check(std::isfinite(options.max_ratio) && options.max_ratio > 0, "max_ratio",
               "must be > 0 (got " + number(options.max_ratio) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

// ---------------------------------------------------------------------------------------------
// The weights and the loss

Result<RatioWeights> ratio_weights(const torch::Tensor& before,
                                   const std::vector<torch::Tensor>& after,
                                   const RatioLossOptions& options) {
  try {
    if (!before.defined() || before.dim() != 2 || !before.is_floating_point()) {
      return Status::InvalidArgument(
          "ratio_weights: the classifier weight must be a 2-D float "
          "tensor (K×d)");
    }
    const int64_t k = before.size(0);
    if (k < 2) {
      return Status::InvalidArgument("ratio_weights: needs at least 2 classes (got " +
                                     std::to_string(k) + ")");
    }
    if (static_cast<int64_t>(after.size()) != k) {
      return Status::InvalidArgument("ratio_weights: " + std::to_string(after.size()) +
                                     " trained weights for " + std::to_string(k) +
                                     " classes (one per class expected)");
    }
    for (int64_t p = 0; p < k; ++p) {
      const torch::Tensor& a = after[static_cast<size_t>(p)];
      if (!a.defined() || !a.is_floating_point() || a.sizes() != before.sizes()) {
        return Status::InvalidArgument("ratio_weights: the weight trained on class " +
                                       std::to_string(p) + " is not a float tensor shaped " +
                                       "like the classifier weight");
      }
      if (!torch::isfinite(a).all().item<bool>()) {
        return Status::InvalidArgument("ratio_weights: the weight trained on class " +
                                       std::to_string(p) + " is not finite");
      }
    }
    if (!torch::isfinite(before).all().item<bool>()) {
      return Status::InvalidArgument("ratio_weights: the classifier weight is not finite");
    }

    const torch::Tensor base = before.detach().to(torch::kCPU, torch::kFloat64);
    // D_p, made again for each pass: O(K·d) memory besides the inputs whatever K.
    auto delta = [&](int64_t p) {
      return after[static_cast<size_t>(p)].detach().to(torch::kCPU, torch::kFloat64) - base;
    };
    // Pass 1: top = max_p D_p, owner = its first argmax, total = Σ_p D_p.
    torch::Tensor top = delta(0);
    torch::Tensor total = top.clone();
    torch::Tensor owner = torch::zeros(base.sizes(), torch::kInt64);
    for (int64_t p = 1; p < k; ++p) {
      const torch::Tensor d = delta(p);
      const torch::Tensor greater = d > top;  // strictly: ties keep the first class
      top = torch::where(greater, d, top);
      owner.masked_fill_(greater, p);
      total += d;
    }
    // Pass 2: an element is disqualified by a rival q != owner with |D_q| / |top| > dominance,
    // or, when top is 0, with D_q == 0 (search_neuron_new counts the classes equal to the max).
    const torch::Tensor top_abs = top.abs();
    const torch::Tensor zero_top = top == 0;
    torch::Tensor disqualified = torch::zeros(base.sizes(), torch::kBool);
    for (int64_t q = 0; q < k; ++q) {
      const torch::Tensor d = delta(q);
      // Where top is 0 the quotient is inf or nan; torch::where takes the other branch there.
      const torch::Tensor rival =
          torch::where(zero_top, d == 0, d.abs() / top_abs > options.dominance)
              .logical_and(owner != q);
      disqualified.logical_or_(rival);
    }
    const torch::Tensor assigned = disqualified.logical_not();

    // Per class over pos_p: Σ D_p (= top there) and Σ mean_{q≠p} D_q (= (total − top)/(K−1)).
    const torch::Tensor zero = torch::zeros({}, torch::kFloat64);
    const torch::Tensor own = torch::where(assigned, top, zero).flatten();
    const torch::Tensor others =
        torch::where(assigned, (total - top) / static_cast<double>(k - 1), zero).flatten();
    const torch::Tensor index = owner.flatten();
    const torch::Tensor own_sum =
        torch::zeros({k}, torch::kFloat64).scatter_add_(0, index, own).contiguous();
    const torch::Tensor others_sum =
        torch::zeros({k}, torch::kFloat64).scatter_add_(0, index, others).contiguous();
    RatioWeights out;
    out.assigned = torch::zeros({k}, torch::kInt64)
                       .scatter_add_(0, index, assigned.to(torch::kInt64).flatten());

    std::vector<double> ratio(static_cast<size_t>(k));
    std::vector<float> alpha(static_cast<size_t>(k));
    const double* s = own_sum.data_ptr<double>();
    const double* o = others_sum.data_ptr<double>();
    for (int64_t p = 0; p < k; ++p) {
      double r = o[p] != 0 ? std::abs(s[p]) / std::abs(o[p]) : kRatioLossUndefinedRatio;
      r = std::min(r, options.max_ratio);  // also catches an overflow to inf
      ratio[static_cast<size_t>(p)] = r;
      alpha[static_cast<size_t>(p)] = static_cast<float>(options.alpha + options.beta * r);
    }
    out.ratio = torch::tensor(ratio, torch::kFloat64);
    out.alpha = torch::tensor(alpha, torch::kFloat32);
    return out;
  } catch (const std::exception& e) {
    return torch_failure("ratio_weights", e);
  }
}

torch::Tensor ratio_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                  const torch::Tensor& alpha) {
  namespace F = torch::nn::functional;
  const torch::Tensor ce =
      F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().reduction(torch::kNone));
  return (alpha.index_select(0, labels) * ce).mean();
}

Result<torch::Tensor> task_alpha(const TensorBundle& bundle, int64_t num_classes) {
  const std::string where = std::string("task bundle: tensor \"") + kRatioLossAlphaTensor + "\"";
  const NamedTensor* t = bundle.find(kRatioLossAlphaTensor);
  if (t == nullptr) {
    return Status::InvalidArgument(where +
                                   ": missing (a ratioloss fit task carries the class weights)");
  }
  FEDTAIL_RETURN_IF_ERROR(check_alpha(*t, num_classes, where));
  try {
    return to_torch(*t);
  } catch (const std::exception& e) {
    return torch_failure("ratioloss: reading the class weights", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Aggregation

// FedAvg's aggregation; finish() adds the probe and the new α (RatioLossServer::finish_round).
class RatioLossAggregation final : public Aggregation {
 public:
  RatioLossAggregation(RatioLossServer* server, int round, std::unique_ptr<Aggregation> fedavg,
                       torch::Tensor used)
      : server_(server), round_(round), fedavg_(std::move(fedavg)), used_(std::move(used)) {}

  Status add(ClientUpdate update) override { return fedavg_->add(std::move(update)); }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    return server_->finish_round(round_, *fedavg_, used_, failures);
  }

 private:
  RatioLossServer* const server_;  // borrowed; outlives this
  const int round_;
  std::unique_ptr<Aggregation> fedavg_;
  const torch::Tensor used_;  // α_r, as this round's tasks carried it
};

// ---------------------------------------------------------------------------------------------
// Server

RatioLossServer::RatioLossServer(const RatioLossOptions& options)
    : FedAvgServer("ratioloss", options.round), options_(options) {}

Result<std::vector<Dataset>> RatioLossServer::check_run(const RunContext& run,
                                                        int64_t num_classes) const {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  FEDTAIL_RETURN_IF_ERROR(require_cross_entropy(run.config->local, "ratioloss"));
  if (run.auxiliary == nullptr || run.auxiliary->size() == 0) {
    return Status::InvalidArgument(
        "config.data.auxiliary_per_class: ratioloss needs the balanced auxiliary set that only "
        "the server holds, and this run has none; set config.data.auxiliary_per_class (the "
        "authors use 63 examples per class)");
  }
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(num_classes));
  const std::vector<int64_t> labels = run.auxiliary->label_vector();
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return Status::InvalidArgument("ratioloss: auxiliary example " + std::to_string(i) +
                                     " has label " + std::to_string(labels[i]) + ", outside [0, " +
                                     std::to_string(num_classes) + ")");
    }
    rows[static_cast<size_t>(labels[i])].push_back(static_cast<int64_t>(i));
  }
  std::vector<Dataset> by_class;
  by_class.reserve(rows.size());
  try {
    for (size_t c = 0; c < rows.size(); ++c) {
      if (rows[c].empty()) {
        return Status::InvalidArgument(
            "config.data.auxiliary_per_class: the auxiliary set has no example of class " +
            std::to_string(c) + "; ratioloss needs every class");
      }
      by_class.push_back(run.auxiliary->subset(rows[c]));
    }
  } catch (const std::exception& e) {
    return torch_failure("ratioloss: splitting the auxiliary set by class", e);
  }
  return by_class;
}

Status RatioLossServer::initialize(const RunContext& run, Rng& rng) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<Dataset> aux, check_run(run, model_options.num_classes));
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  model_options_ = model_options;
  seed_ = run.config->seed;
  alpha_ = torch::ones({model_options.num_classes}, torch::kFloat32);
  local_ = run.config->local;
  device_ = run.device;
  aux_by_class_ = std::move(aux);
  probe_model_ = Model(nullptr);
  return Status::OK();
}

Status RatioLossServer::resume(const RunContext& run) {
  if (!global_bundle() || !alpha_.defined()) {
    return Status::FailedPrecondition("ratioloss: resume before load_state");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<Dataset> aux, check_run(run, alpha_.size(0)));
  local_ = run.config->local;
  device_ = run.device;
  aux_by_class_ = std::move(aux);
  probe_model_ = Model(nullptr);
  return Status::OK();
}

Result<std::vector<TaskSpec>> RatioLossServer::configure_fit(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  if (tasks.empty()) return tasks;
  TensorBundle bundle = global().clone();
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor alpha, from_torch(kRatioLossAlphaTensor, alpha_));
  FEDTAIL_RETURN_IF_ERROR(bundle.add(std::move(alpha)));
  auto shared = std::make_shared<const TensorBundle>(std::move(bundle));
  for (TaskSpec& task : tasks) task.bundle = shared;
  return tasks;
}

Result<std::unique_ptr<Aggregation>> RatioLossServer::begin_aggregation(int round) {
  if (aux_by_class_.empty()) {
    return Status::FailedPrecondition(
        "ratioloss: no auxiliary set (initialize, or load_state then resume, first)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  return std::unique_ptr<Aggregation>(
      std::make_unique<RatioLossAggregation>(this, round, std::move(fedavg), alpha_));
}

Result<RatioWeights> RatioLossServer::probe(int round) {
  const TensorBundle& g = global();
  const NamedTensor* w = g.find(kClassifierWeight);
  const int64_t k = static_cast<int64_t>(aux_by_class_.size());
  if (w == nullptr || w->dtype() != DType::kFloat32 || w->dim() != 2 || w->shape()[0] != k) {
    return Status::FailedPrecondition("ratioloss: the global model has no float32 [" +
                                      std::to_string(k) + ", d] \"" + kClassifierWeight + "\"");
  }
  LocalTrainOptions local = local_;
  local.loss = LocalLossOptions();  // plain cross-entropy, as the code's alpha=None
  try {
    if (!probe_model_) {
      Rng init = Rng::derive(seed_, "ratioloss-probe-model");  // overwritten by G_r anyway
      FEDTAIL_ASSIGN_OR_RETURN(probe_model_, make_model(model_options_, init));
    }
    const torch::Tensor before = to_torch(*w);
    std::vector<torch::Tensor> after;
    after.reserve(static_cast<size_t>(k));
    for (int64_t p = 0; p < k; ++p) {
      const std::string where =
          "ratioloss: training on the auxiliary examples of class " + std::to_string(p);
      FEDTAIL_RETURN_IF_ERROR(
          load_module_state(*probe_model_, g, /*strict=*/true).with_context(where));
      Rng rng = Rng::derive(seed_, "ratioloss-aux",
                            {static_cast<uint64_t>(round), static_cast<uint64_t>(p)});
      FEDTAIL_RETURN_IF_ERROR(
          train_local(probe_model_, aux_by_class_[static_cast<size_t>(p)], local, device_, rng)
              .status()
              .with_context(where));
      after.push_back(probe_model_->head(kClassifierHead)->weight.detach().to(torch::kCPU).clone());
    }
    return ratio_weights(before, after, options_);
  } catch (const std::exception& e) {
    return torch_failure("ratioloss: auxiliary probe", e);
  }
}

Result<nlohmann::json> RatioLossServer::finish_round(int round, Aggregation& fedavg,
                                                     const torch::Tensor& used,
                                                     const std::vector<ClientFailure>& failures) {
  // α_{r+1} from G_r: probe before FedAvg's finish installs G_{r+1}.
  const auto start = std::chrono::steady_clock::now();
  FEDTAIL_ASSIGN_OR_RETURN(RatioWeights next, probe(round));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json metrics, fedavg.finish(failures));
  try {
    metrics["ratioloss"] = {{"alpha", to_doubles(used)},
                            {"ratio", to_doubles(next.ratio)},
                            {"next_alpha", to_doubles(next.alpha)},
                            {"assigned", to_ints(next.assigned)},
                            {"probe_seconds", seconds}};
  } catch (const std::exception& e) {
    return torch_failure("ratioloss: metrics", e);
  }
  alpha_ = next.alpha;
  return metrics;
}

Status RatioLossServer::save_extra_state(TensorBundle* state) const {
  if (!alpha_.defined()) return Status::FailedPrecondition("ratioloss: no class weights");
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor alpha, from_torch(kStateAlpha, alpha_));
  FEDTAIL_RETURN_IF_ERROR(state->add(std::move(alpha)));
  state->mutable_metadata()["ratioloss"] = {{"seed", seed_}};
  return Status::OK();
}

Status RatioLossServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                         const TensorBundle& global) {
  const std::string where = "ratioloss state";
  if (!metadata.contains("ratioloss") || !metadata["ratioloss"].is_object()) {
    return Status::InvalidArgument(where + ": the metadata has no \"ratioloss\" object");
  }
  JsonReader reader(metadata["ratioloss"], "state.ratioloss");
  uint64_t seed = 0;
  reader.read_required("seed", &seed);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  // The base has checked that this exists and parses; the probe needs it here too.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  for (const NamedTensor& t : extra) {
    if (t.name() != kStateAlpha) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
  }
  const NamedTensor* alpha = extra.find(kStateAlpha);
  if (alpha == nullptr) {
    return Status::InvalidArgument(where + ": tensor \"" + kStateAlpha + "\": missing");
  }
  const NamedTensor* w = global.find(kClassifierWeight);
  if (w == nullptr || w->dim() != 2) {
    return Status::InvalidArgument(where + ": the global model has no 2-D \"" + kClassifierWeight +
                                   "\"");
  }
  FEDTAIL_RETURN_IF_ERROR(
      check_alpha(*alpha, w->shape()[0], where + ": tensor \"" + kStateAlpha + "\""));
  torch::Tensor alpha_tensor;
  try {
    alpha_tensor = to_torch(*alpha);
  } catch (const std::exception& e) {
    return torch_failure(where, e);
  }
  model_options_ = model_options;
  seed_ = seed;
  alpha_ = std::move(alpha_tensor);
  probe_model_ = Model(nullptr);
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<FitOutput> RatioLossClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr) {
    return Status::InvalidArgument("ratioloss client fit: the context of client " +
                                   context.client_id + " lacks a model, data, config or rng");
  }
  Model& model = *context.model;
  FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor alpha, task_alpha(global, model->num_classes()));
  try {
    FEDTAIL_RETURN_IF_ERROR(load_global_model(model, global));
    LocalTrainOptions local = context.config->local;
    local.loss = LocalLossOptions();  // the plain path below is cross-entropy, never another loss
    // α = 1 everywhere: train_local's own cross-entropy, bit for bit FedAvg's update.
    const bool uniform = (alpha == 1).all().item<bool>();
    Model m = model;  // the holder shares the module; the lambda must not capture a reference
    const torch::Tensor weights = alpha.to(context.device);
    Result<TrainStats> stats =
        uniform ? train_local(model, *context.train, local, context.device, *context.rng)
                : train_local(model, *context.train, local, context.device, *context.rng,
                              [m, weights](const torch::Tensor& x, const torch::Tensor& y) mutable {
                                return ratio_cross_entropy(m->forward(x), y, weights);
                              });
    if (!stats.ok()) return stats.status();
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats->mean_loss}, {"steps", stats->steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("ratioloss client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_ratioloss_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(RatioLossOptions options, parse_ratioloss_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<RatioLossServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_ratioloss_client(const nlohmann::json& config) {
  FEDTAIL_RETURN_IF_ERROR(parse_ratioloss_options(config).status());
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<RatioLossClient>());
}

StrategyEntry ratioloss_strategy_entry() {
  return {"ratioloss",
          "Ratio Loss: FedAvg with class-weighted CE, weights estimated each round from the "
          "global classifier trained on a balanced server-held auxiliary set (Wang et al. 2021)",
          make_ratioloss_server, make_ratioloss_client};
}

}  // namespace fedtail::strategies
