// FedETF's client half (fedetf.h): the balanced-loss training of backbone, projection and
// temperature against the fixed ETF, and the local adaptation scored at federated evaluation.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/loss_epochs.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedetf/fedetf.h"
#include "strategies/local_layers.h"

namespace fedtail::strategies {

namespace {

constexpr char kName[] = "fedetf";
// h = z / max(‖z‖, kNormFloor): the code's clamp(min=1e-12).
constexpr double kNormFloor = 1e-12;

Status require_context(const ClientContext& context, const char* what, bool needs_training) {
  if (context.model == nullptr || context.config == nullptr ||
      (needs_training && (context.train == nullptr || context.rng == nullptr))) {
    return Status::InvalidArgument(std::string("fedetf client ") + what +
                                   ": the context of client " + context.client_id +
                                   " lacks a model, data, config or rng");
  }
  return Status::OK();
}

// Makes every parameter of the model trainable again when it goes out of scope: the phases freeze
// parts of it, and the model is shared by the worker's clients.
class TrainableOnExit {
 public:
  explicit TrainableOnExit(Model model) : model_(std::move(model)) {}
  ~TrainableOnExit() { set_all_trainable(model_); }
  TrainableOnExit(const TrainableOnExit&) = delete;
  TrainableOnExit& operator=(const TrainableOnExit&) = delete;

 private:
  Model model_;
};

void freeze_all(Model& model) {
  for (torch::Tensor& p : model->parameters()) p.set_requires_grad(false);
}

// The task's M and β on the training device: leaves, without gradient until a phase asks.
struct EtfTensors {
  torch::Tensor matrix;       // K×K
  torch::Tensor temperature;  // scalar
};

// Loads the model's tensors of `global` into `model`, moves it to `device` and returns M and β.
// `global` must hold exactly the model's parameters and buffers, plus M and β
// (check_etf_tensors); kInvalidArgument names the first tensor that is extra, missing or
// misshapen, and the model is then unchanged.
Result<EtfTensors> load_global(Model& model, const TensorBundle& global, torch::Device device) {
  std::set<std::string> expected;
  for (const auto& p : model->named_parameters(/*recurse=*/true)) expected.insert(p.key());
  for (const auto& b : model->named_buffers(/*recurse=*/true)) expected.insert(b.key());
  for (const NamedTensor& t : global) {
    if (t.name() != kEtfMatrixName && t.name() != kEtfTemperatureName &&
        expected.count(t.name()) == 0) {
      return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                     "\": neither a tensor of this model nor the ETF's");
    }
  }
  for (const std::string& name : expected) {
    if (!global.contains(name)) {
      return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
    }
  }
  FEDTAIL_RETURN_IF_ERROR(check_etf_tensors(global, model->num_classes(), "global model"));
  FEDTAIL_RETURN_IF_ERROR(
      load_module_state(*model, global, /*strict=*/false).with_context("global model"));
  model->to(device);
  EtfTensors out;
  out.matrix = to_torch(*global.find(kEtfMatrixName)).to(device);
  out.temperature = to_torch(*global.find(kEtfTemperatureName)).to(device);
  return out;
}

// β·hᵀM for projections z (N×K), h = z / max(‖z‖, kNormFloor) row by row.
torch::Tensor etf_logits(const torch::Tensor& z, const EtfTensors& etf) {
  const torch::Tensor h = z / z.norm(2, /*dim=*/{1}, /*keepdim=*/true).clamp_min(kNormFloor);
  return etf.temperature * h.matmul(etf.matrix);
}

// log n_c of the client's training labels, 1×K on `device`, with a count of 0 taken as 1 (the
// code's sample_per_class), so a class the client lacks gets no adjustment.
torch::Tensor log_counts(const Dataset& data, int64_t num_classes, torch::Device device) {
  const std::vector<int64_t> counts = data.class_counts();
  std::vector<float> logs(static_cast<size_t>(num_classes));
  for (size_t c = 0; c < logs.size(); ++c) {
    const int64_t n = c < counts.size() ? counts[c] : 0;
    logs[c] = static_cast<float>(std::log(static_cast<double>(std::max<int64_t>(n, 1))));
  }
  return torch::tensor(logs).to(device).unsqueeze(0);
}

// One phase: options.epochs epochs (options' batch size, augmentation and step cap) of SGD `sgd`
// over `params`, one step per batch on CE(β·hᵀM + adjustment, y) (plain CE when `adjustment` is
// undefined). The caller sets requires_grad so that only `params` need a gradient.
Result<LossMeans> run_phase(Model& model, const EtfTensors& etf, const torch::Tensor& adjustment,
                            std::vector<torch::Tensor> params, const torch::optim::SGDOptions& sgd,
                            const Dataset& data, const LocalTrainOptions& options,
                            torch::Device device, Rng& rng, const std::string& what) {
  torch::optim::SGD optimizer(std::move(params), sgd);
  torch::nn::Linear projection = model->head(kClassifierHead);
  return run_loss_epochs(
      data, options, /*drop_last=*/false, device, rng, {"of " + what}, "fedetf " + what,
      [&](const torch::Tensor& x, const torch::Tensor& y) -> Result<torch::Tensor> {
        torch::Tensor logits = etf_logits(projection->forward(model->features(x)), etf);
        if (adjustment.defined()) logits = logits + adjustment;
        torch::Tensor loss = torch::nn::functional::cross_entropy(logits, y);
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
        return loss.detach().reshape({1});
      });
}

// The fit's training (and the adaptation's step 1): config.local's SGD over the whole model and β
// on the balanced feature loss, M fixed.
Result<LossMeans> train_balanced(Model& model, EtfTensors& etf, const Dataset& data,
                                 const LocalTrainOptions& options, torch::Device device, Rng& rng) {
  model->train();
  set_all_trainable(model);
  etf.matrix.set_requires_grad(false);
  etf.temperature.set_requires_grad(true);
  std::vector<torch::Tensor> params = model->parameters();
  params.push_back(etf.temperature);
  const auto sgd = torch::optim::SGDOptions(options.lr)
                       .momentum(options.momentum)
                       .weight_decay(options.weight_decay);
  return run_phase(model, etf, log_counts(data, model->num_classes(), device), std::move(params),
                   sgd, data, options, device, rng, "the balanced feature loss");
}

// Local adaptation (the code's Client_personalization) of `model`, loaded with the global model,
// and of `etf`, the client's copy. Returns the adaptation's keys of the evaluation report but
// "etf_shift".
Result<nlohmann::json> adapt(Model& model, EtfTensors& etf, const ClientContext& context,
                             const FedEtfOptions& options) {
  const LocalTrainOptions& local = context.config->local;
  const Dataset& data = *context.train;
  Rng& rng = *context.rng;
  // (1) One more training from the global model.
  FEDTAIL_ASSIGN_OR_RETURN(LossMeans first,
                           train_balanced(model, etf, data, local, context.device, rng));
  // (2) Alternately the ETF and the projection, with plain CE; the backbone and β frozen.
  etf.temperature.set_requires_grad(false);
  const LocalTrainOptions tune = with_epochs(local, options.finetune_epochs);
  const std::vector<std::string> projection_names = head_tensor_names(model, kClassifierHead);
  torch::nn::Linear projection = model->head(kClassifierHead);
  const auto etf_sgd = torch::optim::SGDOptions(options.etf_lr).momentum(0).weight_decay(0);
  const auto projection_sgd = torch::optim::SGDOptions(options.projection_lr)
                                  .momentum(local.momentum)
                                  .weight_decay(local.weight_decay);
  const torch::Tensor plain;  // no adjustment
  nlohmann::json etf_loss;    // null without cycles
  nlohmann::json projection_loss;
  int64_t steps = 0;
  for (int cycle = 0; cycle < options.finetune_cycles; ++cycle) {
    freeze_all(model);
    etf.matrix.set_requires_grad(true);
    FEDTAIL_ASSIGN_OR_RETURN(
        LossMeans etf_phase,
        run_phase(model, etf, plain, std::vector<torch::Tensor>{etf.matrix}, etf_sgd, data, tune,
                  context.device, rng, "the ETF fine-tuning"));
    etf.matrix.set_requires_grad(false);
    set_trainable(model, projection_names, /*trainable=*/true);
    FEDTAIL_ASSIGN_OR_RETURN(
        LossMeans projection_phase,
        run_phase(model, etf, plain, projection->parameters(), projection_sgd, data, tune,
                  context.device, rng, "the projection fine-tuning"));
    etf_loss = etf_phase.means[0];
    projection_loss = projection_phase.means[0];
    steps += etf_phase.steps + projection_phase.steps;
  }
  return nlohmann::json{{"adapt_loss", first.means[0]},
                        {"adapt_steps", first.steps},
                        {"finetune_loss_etf", etf_loss},
                        {"finetune_loss_projection", projection_loss},
                        {"finetune_steps", steps}};
}

}  // namespace

Result<FitOutput> FedEtfClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_context(context, "fit", /*needs_training=*/true));
  if (context.train->size() == 0) {
    return Status::FailedPrecondition("fedetf client fit: client " + context.client_id +
                                      " has no training data");
  }
  Model& model = *context.model;
  TrainableOnExit restore(model);
  try {
    FEDTAIL_ASSIGN_OR_RETURN(EtfTensors etf, load_global(model, global, context.device));
    FEDTAIL_ASSIGN_OR_RETURN(LossMeans stats,
                             train_balanced(model, etf, *context.train, context.config->local,
                                            context.device, *context.rng));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    FEDTAIL_ASSIGN_OR_RETURN(NamedTensor temperature,
                             from_torch(kEtfTemperatureName, etf.temperature));
    FEDTAIL_RETURN_IF_ERROR(out.update.add(std::move(temperature)));
    // M unchanged: the server puts its own back anyway (fedetf.h).
    FEDTAIL_RETURN_IF_ERROR(out.update.add(global.find(kEtfMatrixName)->clone()));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.means[0]}, {"steps", stats.steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("fedetf client fit", e);
  }
}

Result<nlohmann::json> FedEtfClient::evaluate(ClientContext& context, const TensorBundle& global) {
  const bool adapting = context.train != nullptr && context.train->size() > 0;
  FEDTAIL_RETURN_IF_ERROR(require_context(context, "evaluate", /*needs_training=*/adapting));
  Model& model = *context.model;
  TrainableOnExit restore(model);
  try {
    FEDTAIL_ASSIGN_OR_RETURN(EtfTensors etf, load_global(model, global, context.device));
    const torch::Tensor global_matrix = etf.matrix.clone();
    nlohmann::json adaptation = {{"adapt_loss", nullptr},
                                 {"adapt_steps", 0},
                                 {"finetune_loss_etf", nullptr},
                                 {"finetune_loss_projection", nullptr},
                                 {"finetune_steps", 0}};
    if (adapting) {
      Result<nlohmann::json> adapted = adapt(model, etf, context, options_);
      if (!adapted.ok()) return adapted.status().with_context("fedetf local adaptation");
      adaptation = std::move(adapted).value();
    }
    // The adapted projection, folded onto the client's M in the "classifier" slot for scoring,
    // then put back.
    torch::nn::Linear projection = model->head(kClassifierHead);
    torch::Tensor weight;
    torch::Tensor bias;
    {
      torch::NoGradGuard no_grad;
      weight = projection->weight.detach().clone();
      bias = projection->bias.detach().clone();
      auto [folded_weight, folded_bias] =
          fold_etf_head(weight, bias, etf.matrix.detach(), etf.temperature.item<double>());
      projection->weight.copy_(folded_weight);
      projection->bias.copy_(folded_bias);
      adaptation["etf_shift"] = (etf.matrix.detach() - global_matrix).norm().item<double>();
    }
    // Unadapted, the backbone is the global one: the worker's clients can share its features.
    std::optional<PayloadDigest> version;
    if (!adapting) version = payload_digest(global);
    Result<nlohmann::json> report =
        evaluate_classifier_on_client(context, model, version ? &*version : nullptr);
    {
      torch::NoGradGuard no_grad;
      projection->weight.copy_(weight);
      projection->bias.copy_(bias);
    }
    FEDTAIL_RETURN_IF_ERROR(report.status());
    nlohmann::json out = std::move(report).value();
    out.update(adaptation);
    return out;
  } catch (const std::exception& e) {
    return torch_failure("fedetf client evaluate", e);
  }
}

}  // namespace fedtail::strategies
