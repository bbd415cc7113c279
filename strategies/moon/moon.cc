#include "strategies/moon/moon.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>

#include "common/base/json_reader.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "strategies/fedprox/fedprox.h"

namespace fedtail::strategies {

namespace {

std::string number(double value) { return nlohmann::json(value).dump(); }

// A copy of `model` (as it is now) in eval mode with every parameter frozen, loaded with `state`
// when it is not null (strictly: exactly the model's tensors).
Result<Model> frozen_copy(const Model& model, const TensorBundle* state, const std::string& what) {
  FEDTAIL_ASSIGN_OR_RETURN(Model copy, clone_model(model));
  if (state != nullptr) {
    FEDTAIL_RETURN_IF_ERROR(load_module_state(*copy, *state, /*strict=*/true).with_context(what));
  }
  copy->eval();
  for (torch::Tensor& p : copy->parameters()) p.set_requires_grad(false);
  return copy;
}

}  // namespace

Result<MoonOptions> parse_moon_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  MoonOptions options;
  read_round_options(reader, &options.round);
  reader.read("mu", &options.mu);
  reader.check(std::isfinite(options.mu) && options.mu >= 0, "mu",
               "must be >= 0 (got " + number(options.mu) + ")");
  reader.read("temperature", &options.temperature);
  reader.check(std::isfinite(options.temperature) && options.temperature > 0, "temperature",
               "must be > 0 (got " + number(options.temperature) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

torch::Tensor moon_contrastive_loss(const torch::Tensor& z, const torch::Tensor& z_global,
                                    const torch::Tensor& z_previous, double temperature) {
  namespace F = torch::nn::functional;
  const auto cosine = F::CosineSimilarityFuncOptions().dim(1).eps(1e-8);
  const torch::Tensor positive = F::cosine_similarity(z, z_global, cosine);
  const torch::Tensor negative = F::cosine_similarity(z, z_previous, cosine);
  const torch::Tensor logits = torch::stack({positive, negative}, /*dim=*/1) / temperature;
  const torch::Tensor labels =
      torch::zeros({z.size(0)}, torch::TensorOptions().dtype(torch::kInt64).device(z.device()));
  return F::cross_entropy(logits, labels);
}

LossFn moon_loss(Model model, ClassificationLoss base, Model global, Model previous, double mu,
                 double temperature, std::shared_ptr<torch::Tensor> contrastive_sum) {
  torch::nn::Linear head = model->head(kClassifierHead);
  return [model, head, base = std::move(base), global, previous, mu, temperature, contrastive_sum](
             const torch::Tensor& x, const torch::Tensor& y) mutable {
    const torch::Tensor z = model->features(x);
    torch::Tensor z_global, z_previous;
    {
      torch::NoGradGuard no_grad;
      z_global = global->features(x);
      z_previous = previous->features(x);
    }
    const torch::Tensor contrastive = moon_contrastive_loss(z, z_global, z_previous, temperature);
    if (contrastive_sum) contrastive_sum->add_(contrastive.detach(), /*alpha=*/x.size(0));
    return base(head->forward(z), y) + mu * contrastive;
  };
}

Result<FitOutput> MoonClient::fit(ClientContext& context, const TensorBundle& global) {
  if (context.model == nullptr || context.config == nullptr || context.train == nullptr ||
      context.rng == nullptr || context.state == nullptr) {
    return Status::InvalidArgument("moon client fit: the context of client " + context.client_id +
                                   " lacks a model, data, config, rng or state");
  }
  Model& model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    const bool contrastive = options_.mu > 0 && !context.state->tensors.empty();
    TrainStats stats;
    nlohmann::json contrastive_mean;  // null without the term
    if (!contrastive) {
      // FedAvg's own path: bit for bit its update.
      FEDTAIL_ASSIGN_OR_RETURN(stats, train(context));
    } else {
      model->to(context.device);  // the frozen copies live where training happens
      FEDTAIL_ASSIGN_OR_RETURN(Model frozen_global, frozen_copy(model, nullptr, "global model"));
      FEDTAIL_ASSIGN_OR_RETURN(Model previous, frozen_copy(model, &context.state->tensors,
                                                           "client state of " + context.client_id));
      FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss base, client_loss(context));
      auto sum = std::make_shared<torch::Tensor>(
          torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(context.device)));
      FEDTAIL_ASSIGN_OR_RETURN(
          stats,
          train_local(model, *context.train, context.config->local, context.device, *context.rng,
                      moon_loss(model, std::move(base), frozen_global, previous, options_.mu,
                                options_.temperature, sum)));
      if (stats.examples > 0) {
        contrastive_mean = sum->item<double>() / static_cast<double>(stats.examples);
      }
    }
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    context.state->tensors = out.update.clone();  // the previous model of the next round
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss},
                   {"steps", stats.steps},
                   {"contrastive", contrastive},
                   {"loss_contrastive", contrastive_mean}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("moon client fit", e);
  }
}

Result<std::unique_ptr<ServerStrategy>> make_moon_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(MoonOptions options, parse_moon_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("moon", options.round));
}

Result<std::unique_ptr<ClientAlgorithm>> make_moon_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(MoonOptions options, parse_moon_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<MoonClient>(options));
}

StrategyEntry moon_strategy_entry() {
  return {"moon",
          "MOON: FedAvg with a model-contrastive term pulling local representations towards the "
          "global model's and away from the previous local model's (Li et al. 2021)",
          make_moon_server, make_moon_client};
}

}  // namespace fedtail::strategies
