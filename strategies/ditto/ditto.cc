#include "strategies/ditto/ditto.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/base/json_reader.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedprox/fedprox.h"
#include "strategies/local_layers.h"

namespace fedtail::strategies {

Result<DittoOptions> parse_ditto_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  DittoOptions options;
  read_round_options(reader, &options.round);
  reader.read("lambda", &options.lambda);
  reader.check(std::isfinite(options.lambda) && options.lambda >= 0, "lambda",
               "must be >= 0 (got " + std::to_string(options.lambda) + ")");
  nlohmann::json epochs;
  reader.read_raw("personal_epochs", &epochs);
  if (!epochs.is_null()) {
    reader.check(epochs.is_number_integer() && epochs.get<int64_t>() >= 1 &&
                     epochs.get<int64_t>() <= 1000000,
                 "personal_epochs", "must be an integer >= 1 (got " + epochs.dump() + ")");
    if (epochs.is_number_integer()) options.personal_epochs = epochs.get<int>();
  }
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

namespace {

// Trains context.model (the personal model) for `epochs` on CE + (lambda/2)·Σ‖v − anchor‖², the
// anchors being the parameters of the model as it is on entry (the global model).
Result<TrainStats> train_personal(ClientContext& context, const TensorBundle& global, double lambda,
                                  int epochs) {
  Model model = *context.model;
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> anchors;
  model->to(context.device);
  for (const auto& p : model->named_parameters(/*recurse=*/true)) {
    const NamedTensor* anchor = global.find(p.key());
    if (anchor == nullptr) {
      return Status::InvalidArgument("global model: tensor \"" + p.key() + "\": missing");
    }
    params.push_back(p.value());
    anchors.push_back(to_torch(*anchor).to(context.device).clone());
  }
  const LocalTrainOptions options = with_epochs(context.config->local, epochs);
  if (lambda == 0) {
    return train_local(model, *context.train, options, context.device, *context.rng,
                       context.global_train_counts);
  }
  FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss loss, client_loss(context));
  return train_local(
      model, *context.train, options, context.device, *context.rng,
      proximal_loss(model, std::move(loss), std::move(params), std::move(anchors), lambda));
}

}  // namespace

Result<FitOutput> DittoClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_personal_context(context, "ditto", "fit", true));
  Model& model = *context.model;
  try {
    set_all_trainable(model);
    const std::vector<std::string> names = state_names_except(model, {});
    // 1. The personal model, anchored at the received global model.
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_RETURN_IF_ERROR(restore_local(*context.state, model, names).status());
    const int epochs =
        options_.personal_epochs > 0 ? options_.personal_epochs : context.config->local.epochs;
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats personal,
                             train_personal(context, global, options_.lambda, epochs));
    FEDTAIL_RETURN_IF_ERROR(store_local(context.state, model, names));
    // 2. The global model, as FedAvg trains it.
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(
        TrainStats stats, train_local(model, *context.train, context.config->local, context.device,
                                      *context.rng, context.global_train_counts));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss},
                   {"loss_personal", personal.mean_loss},
                   {"steps", stats.steps + personal.steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure("ditto client fit", e);
  }
}

Result<nlohmann::json> DittoClient::evaluate(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_personal_context(context, "ditto", "evaluate", false));
  Model& model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    FEDTAIL_ASSIGN_OR_RETURN(bool personal,
                             restore_local(*context.state, model, state_names_except(model, {})));
    const PayloadDigest version = payload_digest(global);
    return evaluate_classifier_on_client(context, model, personal ? nullptr : &version);
  } catch (const std::exception& e) {
    return torch_failure("ditto client evaluate", e);
  }
}

Result<std::unique_ptr<ServerStrategy>> make_ditto_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(DittoOptions options, parse_ditto_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("ditto", options.round));
}

Result<std::unique_ptr<ClientAlgorithm>> make_ditto_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(DittoOptions options, parse_ditto_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<DittoClient>(options));
}

StrategyEntry ditto_strategy_entry() {
  return {"ditto",
          "Ditto: FedAvg plus a personal model per client, proximal to the global one "
          "(Li et al. 2021)",
          make_ditto_server, make_ditto_client};
}

}  // namespace fedtail::strategies
