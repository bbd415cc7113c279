#include "strategies/feddyn/feddyn.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/classification_loss.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/dtype.h"
#include "strategies/fedprox/fedprox.h"

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

// The client's base loss over the batches of one fit: Σ batch_size · L_k(batch) on the device and
// the examples behind it, filled in by the LossFn (shared with train_local's copy of it).
struct BaseLossSum {
  torch::Tensor sum;  // float64 scalar on the training device; undefined before the first batch
  int64_t examples = 0;
};

// L_k(θ) − Σ_i <g_i, θ_i> + (α/2) Σ_i ‖θ_i − anchor_i‖² (g and anchors detached), recording
// L_k in `base_sum`.
LossFn dynamic_loss(Model model, ClassificationLoss base, std::vector<torch::Tensor> params,
                    std::vector<torch::Tensor> anchors, std::vector<torch::Tensor> grads,
                    double alpha, std::shared_ptr<BaseLossSum> base_sum) {
  const double half_alpha = alpha / 2;
  return [model, base = std::move(base), params = std::move(params), anchors = std::move(anchors),
          grads = std::move(grads), half_alpha,
          base_sum = std::move(base_sum)](const torch::Tensor& x, const torch::Tensor& y) mutable {
    const torch::Tensor loss = base(model->forward(x), y);
    torch::Tensor linear = torch::zeros({}, loss.options());
    torch::Tensor proximal = torch::zeros({}, loss.options());
    for (size_t i = 0; i < params.size(); ++i) {
      linear = linear + (params[i] * grads[i]).sum();
      proximal = proximal + (params[i] - anchors[i]).pow(2).sum();
    }
    const torch::Tensor detached = loss.detach().to(torch::kFloat64);
    if (!base_sum->sum.defined()) base_sum->sum = torch::zeros_like(detached);
    base_sum->sum.add_(detached, /*alpha=*/x.size(0));
    base_sum->examples += x.size(0);
    return loss - linear + half_alpha * proximal;
  };
}

// α_k from the task config (the server's), else `fallback`.
Result<double> task_alpha(const ClientContext& context, double fallback) {
  const nlohmann::json& config = context.task_config;
  if (!config.is_object() || !config.contains(kFedDynAlphaKey)) return fallback;
  const nlohmann::json& value = config[kFedDynAlphaKey];
  if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() <= 0) {
    return Status::InvalidArgument("feddyn client " + context.client_id + ": task config \"" +
                                   kFedDynAlphaKey + "\": must be a finite number > 0 (got " +
                                   value.dump() + ")");
  }
  return value.get<double>();
}

// g_k of the parameters `names` (shaped as `params`) from `state`, as CPU tensors: zeros when the
// state holds none of them. kInvalidArgument naming the tensor when it holds only some, one of
// another dtype or shape, or one for a parameter the model does not have.
Result<std::vector<torch::Tensor>> read_grads(const ClientState& state,
                                              const std::vector<std::string>& names,
                                              const std::vector<torch::Tensor>& params) {
  const std::string prefix = kFedDynClientPrefix;
  size_t held = 0;
  for (const NamedTensor& t : state.tensors) held += starts_with(t.name(), prefix) ? 1 : 0;
  std::vector<torch::Tensor> grads;
  grads.reserve(names.size());
  if (held == 0) {
    for (const torch::Tensor& p : params) {
      grads.push_back(torch::zeros(p.sizes(), p.options().device(torch::kCPU)));
    }
    return grads;
  }
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string name = prefix + names[i];
    const NamedTensor* t = state.tensors.find(name);
    if (t == nullptr) {
      return Status::InvalidArgument("client state: tensor \"" + name + "\": missing (the state " +
                                     "holds " + std::to_string(held) + " g_k tensors for " +
                                     std::to_string(names.size()) + " trainable parameters)");
    }
    FEDTAIL_ASSIGN_OR_RETURN(DType dtype, dtype_from_torch(params[i].scalar_type()));
    const std::vector<int64_t> shape(params[i].sizes().begin(), params[i].sizes().end());
    if (t->dtype() != dtype || t->shape() != shape) {
      return Status::InvalidArgument("client state: tensor \"" + name +
                                     "\": " + dtype_name(t->dtype()) + " " +
                                     shape_to_string(t->shape()) + " != the parameter's " +
                                     dtype_name(dtype) + " " + shape_to_string(shape));
    }
    grads.push_back(to_torch(*t));
  }
  if (held != names.size()) {  // all present, and more: name the first one of no parameter
    const std::set<std::string> expected = [&] {
      std::set<std::string> e;
      for (const std::string& n : names) e.insert(prefix + n);
      return e;
    }();
    for (const NamedTensor& t : state.tensors) {
      if (starts_with(t.name(), prefix) && expected.count(t.name()) == 0) {
        return Status::InvalidArgument("client state: tensor \"" + t.name() +
                                       "\": not a trainable parameter of this model");
      }
    }
  }
  return grads;
}

double l2_norm(const TensorBundle& bundle) {
  double sum = 0;
  for (const NamedTensor& t : bundle) {
    const double* v = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) sum += v[i] * v[i];
  }
  return std::sqrt(sum);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Options

Result<FedDynOptions> parse_feddyn_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedDynOptions options;
  read_round_options(reader, &options.round);
  reader.read("alpha", &options.alpha);
  reader.check(std::isfinite(options.alpha) && options.alpha > 0, "alpha",
               "must be > 0 (got " + number(options.alpha) + ")");
  std::string scaling = "examples";
  reader.read_enum("alpha_scaling", &scaling, {"examples", "uniform"});
  options.alpha_scaling =
      scaling == "uniform" ? FedDynAlphaScaling::kUniform : FedDynAlphaScaling::kExamples;
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

bool feddyn_regularizes(const NamedTensor& tensor) {
  return dtype_is_floating(tensor.dtype()) && !ends_with(tensor.name(), ".running_mean") &&
         !ends_with(tensor.name(), ".running_var");
}

namespace {

// n̄ over the clients that declared examples (in double: no int64 overflow); 0 when none did.
double mean_declared_examples(const std::vector<ClientInfo>& available) {
  double sum = 0;
  int64_t counted = 0;
  for (const ClientInfo& c : available) {
    if (c.num_examples > 0) {
      sum += static_cast<double>(c.num_examples);
      ++counted;
    }
  }
  return counted > 0 ? sum / static_cast<double>(counted) : 0.0;
}

double scaled_alpha(const FedDynOptions& options, int64_t num_examples, double mean) {
  if (options.alpha_scaling == FedDynAlphaScaling::kUniform || num_examples <= 0 || mean <= 0) {
    return options.alpha;
  }
  return options.alpha * mean / static_cast<double>(num_examples);
}

}  // namespace

double feddyn_client_alpha(const FedDynOptions& options, int64_t num_examples,
                           const std::vector<ClientInfo>& available) {
  return scaled_alpha(options, num_examples, mean_declared_examples(available));
}

// ---------------------------------------------------------------------------------------------
// Aggregation

// FedAvg's aggregation of the updates with weight 1 each (the uniform mean); finish() hands m and
// |P| to next_global and puts the true example count and the example-weighted loss back.
class FedDynAggregation final : public Aggregation {
 public:
  FedDynAggregation(FedDynServer* server, int64_t clients, std::unique_ptr<Aggregation> fedavg)
      : server_(server), clients_(clients), fedavg_(std::move(fedavg)) {}

  Status add(ClientUpdate update) override {
    const int64_t n = update.num_examples;
    if (n <= 0) {
      return Status::InvalidArgument("num_examples: must be > 0 (got " + std::to_string(n) + ")");
    }
    int64_t examples = 0;
    if (__builtin_add_overflow(examples_, n, &examples)) {
      return Status::InvalidArgument("num_examples: the total example count overflows int64");
    }
    double loss = std::numeric_limits<double>::quiet_NaN();
    const nlohmann::json& m = update.metrics;
    if (m.is_object() && m.contains("loss") && m["loss"].is_number())
      loss = m["loss"].get<double>();
    update.num_examples = 1;  // the uniform mean (file comment of feddyn.h)
    FEDTAIL_RETURN_IF_ERROR(fedavg_->add(std::move(update)));
    examples_ = examples;
    ++participants_;
    if (std::isfinite(loss)) {
      loss_sum_ += loss * static_cast<double>(n);
      loss_weight_ += static_cast<double>(n);
    }
    return Status::OK();
  }

  Result<nlohmann::json> finish(const std::vector<ClientFailure>& failures) override {
    server_->round_clients_ = clients_;
    server_->round_participants_ = participants_;
    Result<nlohmann::json> metrics = fedavg_->finish(failures);
    server_->round_clients_ = 0;
    server_->round_participants_ = 0;
    if (!metrics.ok()) return metrics;
    (*metrics)["examples"] = examples_;
    (*metrics)["loss"] =
        loss_weight_ > 0 ? nlohmann::json(loss_sum_ / loss_weight_) : nlohmann::json();
    (*metrics)["feddyn"] = {{"alpha", server_->options_.alpha},
                            {"clients", clients_},
                            {"participants", participants_},
                            {"h_norm", l2_norm(server_->h_)}};
    return metrics;
  }

 private:
  FedDynServer* const server_;  // borrowed; outlives this
  const int64_t clients_;       // m
  std::unique_ptr<Aggregation> fedavg_;
  int64_t participants_ = 0;  // |P|: accepted updates
  int64_t examples_ = 0;      // Σ n_k over them
  double loss_sum_ = 0;       // Σ n_k · loss_k over those with a finite "loss" metric
  double loss_weight_ = 0;    // Σ n_k over the same
};

// ---------------------------------------------------------------------------------------------
// Server

FedDynServer::FedDynServer(const FedDynOptions& options)
    : FedAvgServer("feddyn", options.round), options_(options) {}

Status FedDynServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::initialize(run, rng));
  TensorBundle h;
  for (const NamedTensor& t : global()) {
    if (!feddyn_regularizes(t)) continue;
    FEDTAIL_RETURN_IF_ERROR(
        h.add_zeros(kFedDynStatePrefix + t.name(), DType::kFloat64, t.shape()).status());
  }
  h_ = std::move(h);
  configured_round_ = 0;
  configured_clients_ = 0;
  return Status::OK();
}

Result<std::vector<TaskSpec>> FedDynServer::configure_fit(int round,
                                                          const std::vector<ClientInfo>& available,
                                                          Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<TaskSpec> tasks,
                           FedAvgServer::configure_fit(round, available, rng));
  const double mean = mean_declared_examples(available);
  std::map<std::string, int64_t> examples;
  for (const ClientInfo& c : available) examples[c.id] = c.num_examples;
  for (TaskSpec& task : tasks) {
    const auto it = examples.find(task.client_id);
    const int64_t n = it == examples.end() ? 0 : it->second;
    task.config = {{kFedDynAlphaKey, scaled_alpha(options_, n, mean)}};
  }
  configured_round_ = round;
  configured_clients_ = static_cast<int64_t>(available.size());
  return tasks;
}

Result<std::unique_ptr<Aggregation>> FedDynServer::begin_aggregation(int round) {
  if (configured_round_ != round || configured_clients_ <= 0) {
    return Status::FailedPrecondition("feddyn: begin_aggregation(" + std::to_string(round) +
                                      ") without a successful configure_fit for that round (the "
                                      "number of clients m is unknown)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Aggregation> fedavg,
                           FedAvgServer::begin_aggregation(round));
  return std::unique_ptr<Aggregation>(
      std::make_unique<FedDynAggregation>(this, configured_clients_, std::move(fedavg)));
}

Result<TensorBundle> FedDynServer::next_global(int round, TensorBundle average) {
  (void)round;
  if (round_clients_ <= 0 || round_participants_ <= 0) {
    return Status::Internal("feddyn: next_global outside a FedDyn aggregation");
  }
  const double alpha = options_.alpha;
  // α · (1/m) · Σ_{k∈P}(θ_k − θ) = α · |P|/m · (mean − θ).
  const double scale =
      alpha * static_cast<double>(round_participants_) / static_cast<double>(round_clients_);
  TensorBundle next, h;
  try {
    for (NamedTensor& mean : average) {
      if (!feddyn_regularizes(mean)) {  // BatchNorm statistics, counters: the plain mean
        FEDTAIL_RETURN_IF_ERROR(next.add(std::move(mean)));
        continue;
      }
      const NamedTensor* g = global().find(mean.name());
      const NamedTensor* old_h = h_.find(kFedDynStatePrefix + mean.name());
      if (g == nullptr || old_h == nullptr) {
        return Status::Internal("feddyn: no global tensor or h for \"" + mean.name() + "\"");
      }
      const torch::Tensor theta = to_torch(*g).to(torch::kFloat64);
      const torch::Tensor avg = to_torch(mean).to(torch::kFloat64);
      const torch::Tensor new_h = to_torch(*old_h) - scale * (avg - theta);
      const torch::Tensor out = avg - new_h / alpha;
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor h_tensor,
                               from_torch(kFedDynStatePrefix + mean.name(), new_h));
      FEDTAIL_RETURN_IF_ERROR(h.add(std::move(h_tensor)));
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor out_tensor,
                               from_torch(mean.name(), out.to(dtype_to_torch(mean.dtype()))));
      FEDTAIL_RETURN_IF_ERROR(next.add(std::move(out_tensor)));
    }
  } catch (const std::exception& e) {
    return torch_failure("feddyn: server update", e);
  }
  h_ = std::move(h);
  return next;
}

Status FedDynServer::save_extra_state(TensorBundle* state) const {
  for (const NamedTensor& t : h_) FEDTAIL_RETURN_IF_ERROR(state->add(t.clone()));
  return Status::OK();
}

Status FedDynServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                      const TensorBundle& global) {
  (void)metadata;
  const std::string where = "feddyn state";
  const std::string prefix = kFedDynStatePrefix;
  for (const NamedTensor& t : extra) {
    const NamedTensor* g =
        starts_with(t.name(), prefix) ? global.find(t.name().substr(prefix.size())) : nullptr;
    if (g == nullptr || !feddyn_regularizes(*g)) {
      return Status::InvalidArgument(where + ": unexpected tensor \"" + t.name() + "\"");
    }
    if (t.dtype() != DType::kFloat64 || t.shape() != g->shape()) {
      return Status::InvalidArgument(
          where + ": tensor \"" + t.name() + "\": " + dtype_name(t.dtype()) + " " +
          shape_to_string(t.shape()) + " != expected float64 " + shape_to_string(g->shape()));
    }
  }
  TensorBundle h;
  for (const NamedTensor& g : global) {
    if (!feddyn_regularizes(g)) continue;
    NamedTensor* t = extra.find(prefix + g.name());
    if (t == nullptr) {
      return Status::InvalidArgument(where + ": tensor \"" + prefix + g.name() + "\": missing");
    }
    FEDTAIL_RETURN_IF_ERROR(h.add(std::move(*t)));
  }
  h_ = std::move(h);
  configured_round_ = 0;
  configured_clients_ = 0;
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Client

Result<FitOutput> FedDynClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr || context.state == nullptr) {
    return Status::InvalidArgument("feddyn client fit: the context of client " + context.client_id +
                                   " lacks a model, data, config, rng or state");
  }
  FEDTAIL_ASSIGN_OR_RETURN(const double alpha, task_alpha(context, alpha_));
  Model model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    model->to(context.device);  // the anchors and g_k must live where training happens
    std::vector<std::string> names;
    std::vector<torch::Tensor> params, anchors;
    for (const auto& p : model->named_parameters()) {
      if (!p.value().requires_grad()) continue;
      names.push_back(p.key());
      params.push_back(p.value());
      anchors.push_back(p.value().detach().clone());
    }
    FEDTAIL_ASSIGN_OR_RETURN(std::vector<torch::Tensor> grads,
                             read_grads(*context.state, names, params));
    for (torch::Tensor& g : grads) g = g.to(context.device);
    FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss loss, client_loss(context));
    auto base_sum = std::make_shared<BaseLossSum>();
    FEDTAIL_ASSIGN_OR_RETURN(
        TrainStats stats,
        train_local(*context.model, *context.train, context.config->local, context.device,
                    *context.rng,
                    dynamic_loss(model, std::move(loss), params, anchors, grads, alpha, base_sum)));

    // g_k ← g_k − α_k (θ_k^t − θ^{t−1}), in float64, stored in the parameter's dtype.
    TensorBundle fresh;
    for (size_t i = 0; i < names.size(); ++i) {
      const torch::Tensor step =
          params[i].detach().to(torch::kFloat64) - anchors[i].to(torch::kFloat64);
      const torch::Tensor g = (grads[i].to(torch::kFloat64) - alpha * step).to(params[i].dtype());
      FEDTAIL_ASSIGN_OR_RETURN(NamedTensor t, from_torch(kFedDynClientPrefix + names[i], g));
      FEDTAIL_RETURN_IF_ERROR(fresh.add(std::move(t)));
    }
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    out.num_examples = context.train->size();
    const double base_loss = base_sum->examples > 0 ? base_sum->sum.item<double>() /
                                                          static_cast<double>(base_sum->examples)
                                                    : 0.0;
    out.metrics = {{"loss", base_loss},
                   {"objective", stats.mean_loss},
                   {"steps", stats.steps},
                   {"alpha", alpha}};

    // Commit: the state's other tensors and metadata are kept.
    TensorBundle next;
    FEDTAIL_RETURN_IF_ERROR(next.set_metadata(context.state->tensors.metadata()));
    for (const NamedTensor& t : context.state->tensors) {
      if (!starts_with(t.name(), kFedDynClientPrefix)) FEDTAIL_RETURN_IF_ERROR(next.add(t.clone()));
    }
    for (NamedTensor& t : fresh) FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
    context.state->tensors = std::move(next);
    return out;
  } catch (const std::exception& e) {
    return torch_failure("feddyn client fit", e);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_feddyn_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedDynOptions options, parse_feddyn_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedDynServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_feddyn_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedDynOptions options, parse_feddyn_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedDynClient>(options.alpha));
}

StrategyEntry feddyn_strategy_entry() {
  return {"feddyn",
          "FedDyn: clients' losses with a dynamic linear + quadratic regulariser, server mean "
          "corrected by the clients' mean drift h (Acar et al. 2021)",
          make_feddyn_server, make_feddyn_client};
}

}  // namespace fedtail::strategies
