#include "strategies/prototypes/prototype_client.h"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <utility>

#include "common/data/augment.h"
#include "common/learning/loss_epochs.h"
#include "common/learning/metrics.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"

namespace fedtail::strategies {
namespace {

Status require_context(const ClientContext& context, const std::string& what, bool for_fit) {
  if (context.model == nullptr || context.config == nullptr || context.state == nullptr ||
      (for_fit && (context.train == nullptr || context.rng == nullptr))) {
    return Status::InvalidArgument(what + ": the context of client " + context.client_id +
                                   " lacks a model, data, config, state or rng");
  }
  return Status::OK();
}

// Reads the task's P̄, sized for `model`, after checking the bundle's tensor names.
Result<PrototypeSet> read_global(const TensorBundle& global, const std::vector<std::string>& names,
                                 const Model& model) {
  FEDTAIL_RETURN_IF_ERROR(check_tensor_names(global, names, "global bundle"));
  return read_prototype_tensors(global, model->num_classes(), model->feature_dim(),
                                "global bundle");
}

torch::Tensor rows_tensor(const PrototypeSet& set, torch::Device device) {
  return torch::from_blob(const_cast<float*>(set.rows.data()), {set.num_classes, set.feature_dim},
                          torch::kFloat32)
      .clone()
      .to(device);
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU).to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// {"correct", "examples", "per_class_correct", "per_class_examples"} of `predictions` (N, CPU).
nlohmann::json hit_counts(const torch::Tensor& predictions, const torch::Tensor& labels,
                          int64_t num_classes) {
  torch::Tensor hits = predictions.eq(labels);
  return {{"correct", hits.sum().item<int64_t>()},
          {"examples", labels.size(0)},
          {"per_class_correct",
           to_vector(torch::bincount(labels.masked_select(hits), {}, num_classes))},
          {"per_class_examples", to_vector(torch::bincount(labels, {}, num_classes))}};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The client's own model

Status load_client_model(ClientContext& context, const std::string& purpose) {
  Model& model = *context.model;
  ClientState& state = *context.state;
  const std::string arch = model->options().arch;
  if (state.tensors.empty()) {
    // Same seed for every client of an architecture: same-architecture clients start identical,
    // as in the FedProto and FedSA authors' code (one seeded model copied to each client).
    Rng rng = Rng::derive(context.config->seed, purpose + ".client_model." + arch);
    FEDTAIL_ASSIGN_OR_RETURN(Model fresh, make_model(model->options(), rng));
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle weights, module_state(*fresh));
    return load_module_state(*model, weights, /*strict=*/true).with_context("fresh client model");
  }
  if (state.values.contains("arch") && state.values["arch"] != arch) {
    return Status::InvalidArgument("client state of " + context.client_id + ": its model is a " +
                                   state.values["arch"].dump() +
                                   ", this client's architecture is " + arch);
  }
  return load_module_state(*model, state.tensors, /*strict=*/true)
      .with_context("client state of " + context.client_id);
}

Status store_client_model(ClientContext& context) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle weights, module_state(**context.model));
  context.state->tensors = std::move(weights);
  context.state->values["arch"] = (*context.model)->options().arch;
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Prototypes and training

PrototypeAccumulator::PrototypeAccumulator(int64_t num_classes, int64_t feature_dim,
                                           torch::Device device)
    : num_classes_(num_classes),
      feature_dim_(feature_dim),
      sums_(torch::zeros({num_classes, feature_dim},
                         torch::TensorOptions().dtype(torch::kFloat64).device(device))),
      counts_(torch::zeros({num_classes},
                           torch::TensorOptions().dtype(torch::kInt64).device(device))) {}

void PrototypeAccumulator::add(const torch::Tensor& features, const torch::Tensor& labels) {
  sums_.index_add_(0, labels, features.detach().to(torch::kFloat64));
  counts_.add_(torch::bincount(labels, {}, num_classes_));
}

PrototypeSet PrototypeAccumulator::finish() const {
  PrototypeSet set = PrototypeSet::empty(num_classes_, feature_dim_);
  const torch::Tensor counts = counts_.to(torch::kCPU).contiguous();
  const torch::Tensor divisor = counts.clamp_min(1).to(torch::kFloat64).unsqueeze(1);
  const torch::Tensor means = (sums_.to(torch::kCPU) / divisor).to(torch::kFloat32).contiguous();
  std::memcpy(set.rows.data(), means.data_ptr<float>(), set.rows.size() * sizeof(float));
  std::memcpy(set.counts.data(), counts.data_ptr<int64_t>(), set.counts.size() * sizeof(int64_t));
  return set;
}

Result<PrototypeTraining> train_collecting_prototypes(Model& model, const Dataset& data,
                                                      const LocalTrainOptions& options,
                                                      bool drop_last, torch::Device device,
                                                      Rng& rng, const LocalObjective& objective) {
  const size_t num_values = objective.terms.size() + 1;  // the total, then the terms
  std::vector<std::string> names = {"(total)"};
  for (const std::string& term : objective.terms) names.push_back("term " + term);
  PrototypeTraining out;
  try {
    model->to(device);
    model->train();
    std::vector<torch::Tensor> trainable;
    for (const auto& p : model->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::optim::SGD optimizer(trainable, torch::optim::SGDOptions(options.lr)
                                               .momentum(options.momentum)
                                               .weight_decay(options.weight_decay));
    torch::nn::Linear head = model->head(kClassifierHead);
    PrototypeAccumulator prototypes(model->num_classes(), model->feature_dim(), device);
    FEDTAIL_ASSIGN_OR_RETURN(
        LossMeans means,
        run_loss_epochs(
            data, options, drop_last, device, rng, names, "local training",
            [&](const torch::Tensor& x, const torch::Tensor& y) -> Result<torch::Tensor> {
              const torch::Tensor z = model->features(x);
              const torch::Tensor logits = head->forward(z);
              std::vector<torch::Tensor> values = objective.loss(z, logits, y);
              if (values.size() != num_values) {
                return Status::Internal("the objective returned " + std::to_string(values.size()) +
                                        " values, expected " + std::to_string(num_values));
              }
              optimizer.zero_grad();
              values[0].backward();
              optimizer.step();
              std::vector<torch::Tensor> detached;
              for (const torch::Tensor& v : values) detached.push_back(v.detach().reshape({}));
              prototypes.add(z, y);
              return torch::stack(detached);
            }));
    out.steps = means.steps;
    out.examples = means.examples;
    out.mean_loss = means.means[0];
    out.mean_terms.assign(means.means.begin() + 1, means.means.end());
    out.prototypes = prototypes.finish();
  } catch (const std::exception& e) {
    return torch_failure("local training", e);
  }
  return out;
}

torch::Tensor squared_distances(const torch::Tensor& features, const torch::Tensor& rows) {
  const torch::Tensor z = features.to(torch::kFloat64);
  const torch::Tensor p = rows.to(features.device(), torch::kFloat64);
  const torch::Tensor d = z.pow(2).sum(/*dim=*/1, /*keepdim=*/true) - 2 * z.matmul(p.t()) +
                          p.pow(2).sum(/*dim=*/1).unsqueeze(0);
  return d.clamp_min(0).to(features.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// Evaluation

Result<nlohmann::json> evaluate_prototype_client(const ClientContext& context, Model& model,
                                                 const PrototypeSet& prototypes) {
  if (context.config == nullptr) {
    return Status::InvalidArgument("evaluate_prototype_client: no run config");
  }
  const int64_t num_classes = model->num_classes();
  if (prototypes.num_classes != num_classes || prototypes.feature_dim != model->feature_dim()) {
    return Status::InvalidArgument(
        "evaluate_prototype_client: prototypes " + std::to_string(prototypes.num_classes) + " x " +
        std::to_string(prototypes.feature_dim) + " do not fit a model with " +
        std::to_string(num_classes) + " classes and " + std::to_string(model->feature_dim()) +
        " features");
  }
  const RunConfig& config = *context.config;
  const bool masked = config.eval.mask_absent_classes;
  const int64_t present = prototypes.num_present();
  const nlohmann::json zeros = {{"correct", 0},
                                {"examples", 0},
                                {"per_class_correct", std::vector<int64_t>(num_classes, 0)},
                                {"per_class_examples", std::vector<int64_t>(num_classes, 0)}};
  nlohmann::json out = zeros;
  out["masked"] = masked;
  out["global_prototypes"] = present;
  out["head"] = zeros;
  if (context.test == nullptr || context.test->size() == 0) return out;
  const Dataset& test = *context.test;

  std::vector<int64_t> train_counts;
  if (masked && context.train != nullptr && context.train->size() > 0) {
    train_counts = context.train->class_counts();
  }
  try {
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> absent(static_cast<size_t>(num_classes), 0.0f);
    for (int64_t c = 0; c < num_classes; ++c) {
      if (!prototypes.present(c)) absent[static_cast<size_t>(c)] = -inf;
    }
    const torch::Tensor rows = rows_tensor(prototypes, context.device);
    const torch::Tensor absent_penalty = torch::tensor(absent).to(context.device).unsqueeze(0);
    torch::nn::Linear head = model->head(kClassifierHead);
    LogitsFn logits_fn = [head, rows, absent_penalty](const torch::Tensor& f) mutable {
      // Head logits, then -‖z − P̄_c‖² (-inf for absent classes): one pass over the test set.
      return torch::cat({head->forward(f), -squared_distances(f, rows) + absent_penalty},
                        /*dim=*/1);
    };
    FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor scores,
                             predict_logits(model, test, logits_fn, config.local.augment,
                                            context.device, config.eval.batch_size));
    torch::Tensor head_scores = scores.slice(/*dim=*/1, 0, num_classes);
    torch::Tensor proto_scores = scores.slice(/*dim=*/1, num_classes, 2 * num_classes);
    if (masked) {
      head_scores = mask_absent_classes(head_scores, train_counts);
      proto_scores = mask_absent_classes(proto_scores, train_counts);
    }
    const torch::Tensor labels = test.labels.to(torch::kCPU);
    if (labels.numel() > 0 && labels.max().item<int64_t>() >= num_classes) {
      return Status::InvalidArgument("evaluate_prototype_client: a test label is >= " +
                                     std::to_string(num_classes) + " classes");
    }
    torch::Tensor proto_predictions = proto_scores.argmax(/*dim=*/1);
    // No global prototype yet: no prediction (-1 matches no label).
    if (present == 0) proto_predictions = torch::full_like(proto_predictions, -1);
    nlohmann::json by_prototype = hit_counts(proto_predictions, labels, num_classes);
    for (const auto& [key, value] : by_prototype.items()) out[key] = value;
    out["head"] = hit_counts(head_scores.argmax(/*dim=*/1), labels, num_classes);
  } catch (const std::exception& e) {
    return torch_failure("evaluate_prototype_client", e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// PrototypeClient

PrototypeClient::PrototypeClient(std::string name, PrototypeClientOptions options)
    : name_(std::move(name)), options_(options) {}

std::vector<std::string> PrototypeClient::global_tensor_names() const {
  return {kPrototypesTensor, kCountsTensor};
}

Status PrototypeClient::after_fit(ClientContext& context, const PrototypeSet& local,
                                  nlohmann::json* metrics) {
  (void)context;
  (void)local;
  (void)metrics;
  return Status::OK();
}

Result<FitOutput> PrototypeClient::fit(ClientContext& context, const TensorBundle& global) {
  const std::string what = name_ + " client fit";
  FEDTAIL_RETURN_IF_ERROR(require_context(context, what, /*for_fit=*/true));
  if (context.train->size() == 0) {
    return Status::FailedPrecondition(what + ": client " + context.client_id +
                                      " has no training data");
  }
  try {
    Model model = *context.model;
    FEDTAIL_ASSIGN_OR_RETURN(PrototypeSet prototypes,
                             read_global(global, global_tensor_names(), model));
    FEDTAIL_RETURN_IF_ERROR(load_client_model(context, name_));
    model->to(context.device);
    model->train();
    FEDTAIL_ASSIGN_OR_RETURN(LocalObjective local_objective,
                             objective(context, global, prototypes));
    FEDTAIL_ASSIGN_OR_RETURN(PrototypeTraining training,
                             train_collecting_prototypes(
                                 model, *context.train, context.config->local, options_.drop_last,
                                 context.device, *context.rng, local_objective));
    nlohmann::json metrics = local_objective.metrics;
    metrics["loss"] = training.mean_loss;
    for (size_t i = 0; i < local_objective.terms.size(); ++i) {
      metrics["loss_" + local_objective.terms[i]] = training.mean_terms[i];
    }
    metrics["steps"] = training.steps;
    metrics["classes"] = training.prototypes.num_present();
    FEDTAIL_RETURN_IF_ERROR(after_fit(context, training.prototypes, &metrics));
    FEDTAIL_RETURN_IF_ERROR(store_client_model(context));

    PrototypeSet upload = std::move(training.prototypes);
    if (!options_.weighted) {
      for (int64_t& n : upload.counts) n = n > 0 ? 1 : 0;
    }
    FitOutput out;
    FEDTAIL_RETURN_IF_ERROR(add_prototype_tensors(upload, &out.update));
    out.num_examples = context.train->size();
    out.metrics = std::move(metrics);
    return out;
  } catch (const std::exception& e) {
    return torch_failure(what, e);
  }
}

Result<nlohmann::json> PrototypeClient::evaluate(ClientContext& context,
                                                 const TensorBundle& global) {
  const std::string what = name_ + " client evaluate";
  FEDTAIL_RETURN_IF_ERROR(require_context(context, what, /*for_fit=*/false));
  try {
    Model model = *context.model;
    FEDTAIL_ASSIGN_OR_RETURN(PrototypeSet prototypes,
                             read_global(global, global_tensor_names(), model));
    FEDTAIL_RETURN_IF_ERROR(load_client_model(context, name_));
    return evaluate_prototype_client(context, model, prototypes);
  } catch (const std::exception& e) {
    return torch_failure(what, e);
  }
}

}  // namespace fedtail::strategies
