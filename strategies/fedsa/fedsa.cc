#include "strategies/fedsa/fedsa.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "common/base/json_reader.h"
#include "common/wire/bundle_checks.h"
#include "strategies/sampling.h"

namespace fedtail::strategies {
namespace {

constexpr char kName[] = "fedsa";
// ClientState::values key of the local gap of the client's latest prototypes.
constexpr char kLocalGapKey[] = "local_gap";

// The local gap stored by the client's previous participation: 0 before the first (the authors'
// initial value), −inf for null (it held a single class).
double stored_local_gap(const ClientState& state) {
  if (!state.values.contains(kLocalGapKey)) return 0.0;
  const nlohmann::json& v = state.values[kLocalGapKey];
  if (v.is_number()) return v.get<double>();
  return -std::numeric_limits<double>::infinity();
}

nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json();
}

}  // namespace

Result<FedSaOptions> parse_fedsa_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedSaOptions o;
  read_round_options(reader, &o.server.round);
  reader.check(!o.server.round.robust.enabled(), "robust",
               "fedsa averages class prototypes, not models: robust aggregation is not supported");
  reader.read("gamma", &o.weights.gamma);
  reader.read("lambda", &o.weights.lambda);
  reader.read("mu", &o.weights.mu);
  reader.read("beta", &o.beta);
  reader.read("weighted", &o.server.weighted);
  reader.read("drop_last", &o.drop_last);
  const struct {
    const char* key;
    double value;
  } weights[] = {{"gamma", o.weights.gamma}, {"lambda", o.weights.lambda}, {"mu", o.weights.mu}};
  for (const auto& w : weights) {
    reader.check(std::isfinite(w.value) && w.value >= 0, w.key,
                 "must be >= 0 (got " + std::to_string(w.value) + ")");
  }
  reader.check(o.beta >= 0 && o.beta <= 1, "beta",
               "must be in [0, 1] (got " + std::to_string(o.beta) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return o;
}

// ---------------------------------------------------------------------------------------------
// Server

FedSaServer::FedSaServer(FedSaOptions options)
    : PrototypeServer(kName, options.server), options_(options) {}

Status FedSaServer::initialize_extra(const RunContext& run, Rng& rng) {
  (void)run;
  Rng anchor_rng = Rng::derive(rng.next_u64(), "fedsa.anchors");
  Result<std::vector<float>> anchors =
      build_semantic_anchors(num_classes(), feature_dim(), anchor_rng);
  if (!anchors.ok()) return anchors.status().with_context("config.model.num_classes");
  anchors_ = std::move(anchors).value();
  const NearestDistances gaps =
      nearest_distances(anchor_set(anchors_, num_classes(), feature_dim()));
  double norm = 0;
  for (int64_t c = 0; c < num_classes(); ++c) {
    double squared = 0;
    for (int64_t k = 0; k < feature_dim(); ++k) {
      const double v = anchors_[static_cast<size_t>(c * feature_dim() + k)];
      squared += v * v;
    }
    norm += std::sqrt(squared) / static_cast<double>(num_classes());
  }
  spdlog::info(
      "fedsa: {} semantic anchors of {} dimensions: mean norm {:.3f}, nearest-anchor distance "
      "{:.3f}..{:.3f} (mean {:.3f}: the global gap)",
      num_classes(), feature_dim(), norm, gaps.min, gaps.max, gaps.mean);
  return Status::OK();
}

std::vector<std::string> FedSaServer::extra_tensor_names() const { return {kAnchorsTensor}; }

Status FedSaServer::add_extra_tensors(TensorBundle* bundle) const {
  return bundle->add(NamedTensor::from_values(kAnchorsTensor, DType::kFloat32,
                                              {num_classes(), feature_dim()}, anchors_));
}

Status FedSaServer::check_extra_tensors(const TensorBundle& state) const {
  const NamedTensor* t = state.find(kAnchorsTensor);
  const std::vector<int64_t> shape = {num_classes(), feature_dim()};
  if (t == nullptr || t->dtype() != DType::kFloat32 || t->shape() != shape) {
    return Status::InvalidArgument(
        std::string(kName) + " state: tensor \"" + kAnchorsTensor + "\": " +
        (t == nullptr ? std::string("missing")
                      : std::string(dtype_name(t->dtype())) + " " + shape_to_string(t->shape())) +
        " != expected float32 " + shape_to_string(shape));
  }
  return check_finite(*t).with_context(std::string(kName) + " state");
}

void FedSaServer::install_extra_tensors(const TensorBundle& state) {
  const NamedTensor* t = state.find(kAnchorsTensor);
  anchors_.assign(t->data<float>(), t->data<float>() + t->numel());
}

void FedSaServer::on_global_prototypes(int round, const PrototypeSet& global,
                                       nlohmann::json* metrics) {
  (void)round;
  const double shift = update_anchors(&anchors_, global, options_.beta);
  (*metrics)["anchor_shift"] = shift;
  (*metrics)["anchor_distances"] =
      nearest_distances(anchor_set(anchors_, num_classes(), feature_dim())).to_json();
}

// ---------------------------------------------------------------------------------------------
// Client

FedSaClient::FedSaClient(FedSaOptions options)
    : PrototypeClient(kName, {options.server.weighted, options.drop_last}), options_(options) {}

std::vector<std::string> FedSaClient::global_tensor_names() const {
  return {kAnchorsTensor, kPrototypesTensor, kCountsTensor};
}

Result<LocalObjective> FedSaClient::objective(ClientContext& context, const TensorBundle& global,
                                              const PrototypeSet& prototypes) {
  const Model& model = *context.model;
  const int64_t c = prototypes.num_classes, d = prototypes.feature_dim;
  const NamedTensor* t = global.find(kAnchorsTensor);
  const std::vector<int64_t> shape = {c, d};
  if (t->dtype() != DType::kFloat32 || t->shape() != shape) {
    return Status::InvalidArgument(
        "global bundle: tensor \"" + std::string(kAnchorsTensor) + "\": " + dtype_name(t->dtype()) +
        " " + shape_to_string(t->shape()) + " != expected float32 " + shape_to_string(shape));
  }
  std::vector<float> rows(t->data<float>(), t->data<float>() + t->numel());
  const double global_gap = nearest_distances(anchor_set(rows, c, d)).mean;
  const double local = stored_local_gap(*context.state);
  const double delta = margin_delta(local, global_gap);
  const torch::Tensor anchors =
      torch::from_blob(rows.data(), {c, d}, torch::kFloat32).clone().to(context.device);
  torch::nn::Linear head = model->head(kClassifierHead);
  const FedSaWeights weights = options_.weights;

  LocalObjective out;
  out.terms = {"ce", "cc", "mse", "mcl"};
  out.loss = [head, anchors, delta, weights](const torch::Tensor& z, const torch::Tensor& logits,
                                             const torch::Tensor& y) mutable {
    // CC: the anchors through the head (A has no gradient: only the head learns from it).
    return fedsa_loss(z, logits, head->forward(anchors), anchors, y, delta, weights);
  };
  out.metrics = {
      {"delta", delta}, {"local_gap", finite_or_null(local)}, {"global_gap", global_gap}};
  return out;
}

Status FedSaClient::after_fit(ClientContext& context, const PrototypeSet& local,
                              nlohmann::json* metrics) {
  (void)metrics;
  context.state->values[kLocalGapKey] = finite_or_null(local_gap(local));
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<std::unique_ptr<ServerStrategy>> make_fedsa_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedSaOptions options, parse_fedsa_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedSaServer>(options));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedsa_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedSaOptions options, parse_fedsa_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedSaClient>(options));
}

StrategyEntry fedsa_strategy_entry() {
  return {kName,
          "FedSA: heterogeneous client models learn toward fixed semantic anchors and share only "
          "class prototypes (Zhou et al. 2025)",
          make_fedsa_server, make_fedsa_client};
}

}  // namespace fedtail::strategies
