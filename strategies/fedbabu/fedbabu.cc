#include "strategies/fedbabu/fedbabu.h"

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
#include "strategies/local_layers.h"

namespace fedtail::strategies {

Result<FedBabuOptions> parse_fedbabu_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  FedBabuOptions options;
  read_round_options(reader, &options.round);
  std::string finetune = "whole";
  reader.read_enum("finetune", &finetune, {"whole", "head"});
  options.finetune_whole = finetune == "whole";
  reader.read("finetune_epochs", &options.finetune_epochs);
  reader.check(options.finetune_epochs >= 0, "finetune_epochs",
               "must be >= 0 (got " + std::to_string(options.finetune_epochs) + ")");
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

Result<FitOutput> FedBabuClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(
      require_personal_context(context, "fedbabu", "fit", /*needs_training=*/true));
  Model& model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    set_trainable(model, head_tensor_names(model, kClassifierHead), /*trainable=*/false);
    Result<TrainStats> stats =
        train_local(model, *context.train, context.config->local, context.device, *context.rng,
                    context.global_train_counts);
    set_all_trainable(model);
    FEDTAIL_RETURN_IF_ERROR(stats.status());
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(*model));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats->mean_loss}, {"steps", stats->steps}};
    return out;
  } catch (const std::exception& e) {
    set_all_trainable(model);
    return torch_failure("fedbabu client fit", e);
  }
}

Result<nlohmann::json> FedBabuClient::evaluate(ClientContext& context, const TensorBundle& global) {
  const bool finetune =
      options_.finetune_epochs > 0 && context.train != nullptr && context.train->size() > 0;
  FEDTAIL_RETURN_IF_ERROR(
      require_personal_context(context, "fedbabu", "evaluate", /*needs_training=*/finetune));
  Model& model = *context.model;
  try {
    FEDTAIL_RETURN_IF_ERROR(
        load_module_state(*model, global, /*strict=*/true).with_context("global model"));
    TrainStats tuned;
    if (finetune) {
      if (options_.finetune_whole) {
        set_all_trainable(model);
      } else {
        set_trainable(model, head_tensor_names(model, kClassifierHead), /*trainable=*/true);
      }
      Result<TrainStats> stats = train_local(
          model, *context.train, with_epochs(context.config->local, options_.finetune_epochs),
          context.device, *context.rng, context.global_train_counts);
      set_all_trainable(model);
      if (!stats.ok()) return stats.status().with_context("fedbabu fine-tuning");
      tuned = std::move(stats).value();
    }
    // Fine-tuning changes the backbone (its BatchNorm statistics at least): no shared features.
    const PayloadDigest version = payload_digest(global);
    FEDTAIL_ASSIGN_OR_RETURN(
        nlohmann::json report,
        evaluate_classifier_on_client(context, model, finetune ? nullptr : &version));
    report["finetune_loss"] = tuned.mean_loss;
    report["finetune_steps"] = tuned.steps;
    return report;
  } catch (const std::exception& e) {
    set_all_trainable(model);
    return torch_failure("fedbabu client evaluate", e);
  }
}

Result<std::unique_ptr<ServerStrategy>> make_fedbabu_server(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedBabuOptions options, parse_fedbabu_options(config));
  return std::unique_ptr<ServerStrategy>(std::make_unique<FedAvgServer>("fedbabu", options.round));
}

Result<std::unique_ptr<ClientAlgorithm>> make_fedbabu_client(const nlohmann::json& config) {
  FEDTAIL_ASSIGN_OR_RETURN(FedBabuOptions options, parse_fedbabu_options(config));
  return std::unique_ptr<ClientAlgorithm>(std::make_unique<FedBabuClient>(options));
}

StrategyEntry fedbabu_strategy_entry() {
  return {"fedbabu",
          "FedBABU: body trained and averaged, random head frozen, fine-tuned to personalise "
          "(Oh et al. 2022)",
          make_fedbabu_server, make_fedbabu_client};
}

}  // namespace fedtail::strategies
