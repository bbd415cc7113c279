#include "strategies/local_layers.h"

#include <torch/torch.h>

#include <exception>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/wire/bundle_codec.h"
#include "strategies/classifier_eval.h"

namespace fedtail::strategies {

namespace {

bool has_any_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const std::string& p : prefixes) {
    if (name.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

bool is_batchnorm(const torch::nn::Module& module) {
  return module.as<torch::nn::BatchNorm1d>() != nullptr ||
         module.as<torch::nn::BatchNorm2d>() != nullptr ||
         module.as<torch::nn::BatchNorm3d>() != nullptr;
}

}  // namespace

std::vector<std::string> batchnorm_tensor_names(const Model& model) {
  // BatchNorm layers own no submodules: their tensors are "<module path>.<tensor>".
  std::vector<std::string> prefixes;
  for (const auto& item : model->named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (is_batchnorm(*item.value())) prefixes.push_back(item.key() + ".");
  }
  std::vector<std::string> names;
  if (prefixes.empty()) return names;
  for (const std::string& n : state_names_except(model, {})) {
    if (has_any_prefix(n, prefixes)) names.push_back(n);
  }
  return names;
}

std::vector<std::string> head_tensor_names(const Model& model, const std::string& head) {
  torch::nn::Linear linear = model->head(head);
  std::vector<std::string> names = {"heads." + head + ".weight"};
  if (linear->bias.defined()) names.push_back("heads." + head + ".bias");
  return names;
}

std::vector<std::string> state_names_except(const Model& model,
                                            const std::vector<std::string>& excluded_prefixes) {
  std::vector<std::string> names;
  for (const auto& p : model->named_parameters(/*recurse=*/true)) {
    if (!has_any_prefix(p.key(), excluded_prefixes)) names.push_back(p.key());
  }
  for (const auto& b : model->named_buffers(/*recurse=*/true)) {
    if (b.value().defined() && !has_any_prefix(b.key(), excluded_prefixes)) {
      names.push_back(b.key());
    }
  }
  return names;
}

Status load_global_except(Model& model, const TensorBundle& bundle,
                          const std::vector<std::string>& excluded_prefixes) {
  const std::vector<std::string> names = state_names_except(model, excluded_prefixes);
  const std::set<std::string> expected(names.begin(), names.end());
  for (const NamedTensor& t : bundle) {
    if (expected.count(t.name()) == 0) {
      return Status::InvalidArgument("global model: tensor \"" + t.name() +
                                     "\": not a shared tensor of this model");
    }
  }
  for (const std::string& name : names) {
    if (!bundle.contains(name)) {
      return Status::InvalidArgument("global model: tensor \"" + name + "\": missing");
    }
  }
  return load_module_state(*model, bundle, /*strict=*/false).with_context("global model");
}

Result<bool> restore_local(const ClientState& state, Model& model,
                           const std::vector<std::string>& names) {
  size_t held = 0;
  for (const std::string& name : names) held += state.tensors.contains(name) ? 1 : 0;
  if (held == 0) return false;
  TensorBundle view;
  for (const std::string& name : names) {
    const NamedTensor* t = state.tensors.find(name);
    if (t == nullptr) {
      return Status::InvalidArgument("client state: tensor \"" + name + "\": missing (the state " +
                                     "holds " + std::to_string(held) + " of the " +
                                     std::to_string(names.size()) + " local tensors)");
    }
    FEDTAIL_RETURN_IF_ERROR(view.add(t->clone()));
  }
  FEDTAIL_RETURN_IF_ERROR(
      load_module_state(*model, view, /*strict=*/false).with_context("client state"));
  return true;
}

Status store_local(ClientState* state, const Model& model, const std::vector<std::string>& names) {
  const std::set<std::string> local(names.begin(), names.end());
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle fresh, module_state(*model, names));
  TensorBundle next;
  FEDTAIL_RETURN_IF_ERROR(next.set_metadata(state->tensors.metadata()));
  for (NamedTensor& t : state->tensors) {
    if (local.count(t.name()) == 0) FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
  }
  for (NamedTensor& t : fresh) {
    if (local.count(t.name()) != 0) FEDTAIL_RETURN_IF_ERROR(next.add(std::move(t)));
  }
  state->tensors = std::move(next);
  return Status::OK();
}

void set_trainable(Model& model, const std::vector<std::string>& names, bool trainable) {
  const std::set<std::string> chosen(names.begin(), names.end());
  for (auto& p : model->named_parameters(/*recurse=*/true)) {
    p.value().set_requires_grad(chosen.count(p.key()) != 0 ? trainable : !trainable);
  }
}

void set_all_trainable(Model& model) {
  for (auto& p : model->parameters(/*recurse=*/true)) p.set_requires_grad(true);
}

LocalTrainOptions with_epochs(LocalTrainOptions options, int epochs) {
  options.epochs = epochs;
  return options;
}

Status require_personal_context(const ClientContext& context, const std::string& strategy,
                                const char* what, bool needs_training) {
  if (context.model == nullptr || context.config == nullptr || context.state == nullptr ||
      (needs_training && (context.train == nullptr || context.rng == nullptr))) {
    return Status::InvalidArgument(strategy + " client " + what + ": the context of client " +
                                   context.client_id +
                                   " lacks a model, data, config, state or rng");
  }
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// PartlyLocalClient

Status PartlyLocalClient::load(ClientContext& context, const TensorBundle& global,
                               const std::vector<std::string>& local) {
  Model& model = *context.model;
  FEDTAIL_RETURN_IF_ERROR(
      load_module_state(*model, global, /*strict=*/true).with_context("global model"));
  return restore_local(*context.state, model, local).status();
}

Result<TrainStats> PartlyLocalClient::train(ClientContext& context,
                                            const std::vector<std::string>& local) {
  (void)local;
  set_all_trainable(*context.model);
  return train_local(*context.model, *context.train, context.config->local, context.device,
                     *context.rng, context.global_train_counts);
}

Result<FitOutput> PartlyLocalClient::fit(ClientContext& context, const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(require_personal_context(context, name_, "fit", /*needs_training=*/true));
  try {
    const std::vector<std::string> local = local_names(*context.model);
    FEDTAIL_RETURN_IF_ERROR(load(context, global, local));
    FEDTAIL_ASSIGN_OR_RETURN(TrainStats stats, train(context, local));
    FitOutput out;
    FEDTAIL_ASSIGN_OR_RETURN(out.update, module_state(**context.model));
    FEDTAIL_RETURN_IF_ERROR(store_local(context.state, *context.model, local));
    out.num_examples = context.train->size();
    out.metrics = {{"loss", stats.mean_loss}, {"steps", stats.steps}};
    return out;
  } catch (const std::exception& e) {
    return torch_failure(name_ + " client fit", e);
  }
}

Result<nlohmann::json> PartlyLocalClient::evaluate(ClientContext& context,
                                                   const TensorBundle& global) {
  FEDTAIL_RETURN_IF_ERROR(
      require_personal_context(context, name_, "evaluate", /*needs_training=*/false));
  try {
    const std::vector<std::string> local = local_names(*context.model);
    FEDTAIL_RETURN_IF_ERROR(load(context, global, local));
    // The worker's clients share backbone features only when the backbone is the global one.
    bool backbone_is_global = true;
    for (const std::string& n : local) backbone_is_global &= !has_any_prefix(n, {"backbone."});
    const PayloadDigest version = payload_digest(global);
    return evaluate_classifier_on_client(context, *context.model,
                                         backbone_is_global ? &version : nullptr);
  } catch (const std::exception& e) {
    return torch_failure(name_ + " client evaluate", e);
  }
}

}  // namespace fedtail::strategies
