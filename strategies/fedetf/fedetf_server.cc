// FedETF's server half (fedetf.h): draws the ETF, averages the model and the temperature
// (FedAvgServer) while keeping its own ETF, evaluates the folded head, and decides when clients
// adapt.
#include <torch/torch.h>

#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/learning/classification_loss.h"
#include "common/learning/models.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "strategies/classifier_eval.h"
#include "strategies/fedetf/fedetf.h"

namespace fedtail::strategies {

namespace {

constexpr char kName[] = "fedetf";
// FedAvgServer's documented state format (fedavg.h: save_state), which initialize() builds.
constexpr int kFedAvgStateFormat = 1;
const std::string kClassifierWeight = std::string("heads.") + kClassifierHead + ".weight";
const std::string kClassifierBias = std::string("heads.") + kClassifierHead + ".bias";

// β of a bundle that check_etf_tensors accepts.
double temperature_of(const TensorBundle& bundle) {
  return bundle.find(kEtfTemperatureName)->data<float>()[0];
}

// The global model with the classifier folded onto the ETF (fold_etf_head) and without M and β:
// a plain Model state that evaluate_classifier scores.
Result<TensorBundle> folded_model(const TensorBundle& global) {
  const NamedTensor* weight = global.find(kClassifierWeight);
  const NamedTensor* bias = global.find(kClassifierBias);
  const NamedTensor* matrix = global.find(kEtfMatrixName);
  if (weight == nullptr || bias == nullptr || matrix == nullptr) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": the global bundle lacks the classifier or the ETF");
  }
  TensorBundle out;
  try {
    auto [folded_weight, folded_bias] = fold_etf_head(to_torch(*weight), to_torch(*bias),
                                                      to_torch(*matrix), temperature_of(global));
    for (const NamedTensor& t : global) {
      if (t.name() == kEtfMatrixName || t.name() == kEtfTemperatureName) continue;
      if (t.name() == kClassifierWeight) {
        FEDTAIL_ASSIGN_OR_RETURN(NamedTensor w, from_torch(kClassifierWeight, folded_weight));
        FEDTAIL_RETURN_IF_ERROR(out.add(std::move(w)));
      } else if (t.name() == kClassifierBias) {
        FEDTAIL_ASSIGN_OR_RETURN(NamedTensor b, from_torch(kClassifierBias, folded_bias));
        FEDTAIL_RETURN_IF_ERROR(out.add(std::move(b)));
      } else {
        FEDTAIL_RETURN_IF_ERROR(out.add(t.clone()));
      }
    }
  } catch (const std::exception& e) {
    return torch_failure("fedetf evaluate: folding the classifier", e);
  }
  return out;
}

}  // namespace

FedEtfServer::FedEtfServer(FedEtfOptions options)
    : FedAvgServer(kName, options.round), options_(options) {}

Status FedEtfServer::initialize(const RunContext& run, Rng& rng) {
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options, run_model_options(run));
  FEDTAIL_RETURN_IF_ERROR(require_cross_entropy(run.config->local, kName));
  if (!options_.finetune_every && run.total_rounds < 1) {
    return Status::InvalidArgument(
        "config.strategy.finetune_at: \"final\" needs the number of rounds (got " +
        std::to_string(run.total_rounds) + ")");
  }
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(model_options, rng));
  const int64_t k = model->num_classes();
  if (k < 2) {
    return Status::InvalidArgument(
        "config.model.num_classes: fedetf needs at least 2 classes (got " + std::to_string(k) +
        ")");
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, module_state(*model));
  FEDTAIL_RETURN_IF_ERROR(state.add(NamedTensor::from_values(kEtfTemperatureName, DType::kFloat32,
                                                             {}, std::vector<float>{1.0f})));
  Rng etf_rng = Rng::derive(rng.next_u64(), "fedetf.etf");
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor matrix, make_simplex_etf(k, etf_rng));
  FEDTAIL_RETURN_IF_ERROR(state.add(std::move(matrix)));
  // The whole initial state, installed through load_state: one path for both starts.
  state.mutable_metadata() = {{"strategy", kName},
                              {"format", kFedAvgStateFormat},
                              {"model", model_options_to_json(model_options)},
                              {"input", augment_options_to_json(run.config->local.augment)},
                              {"global_metadata", {{"strategy", kName}, {"round", 0}}},
                              {"total_rounds", run.total_rounds}};
  return load_state(std::move(state));
}

Result<std::vector<TaskSpec>> FedEtfServer::configure_evaluate(
    int round, const std::vector<ClientInfo>& available, Rng& rng) {
  if (options_.finetune_every) return FedAvgServer::configure_evaluate(round, available, rng);
  std::shared_ptr<const TensorBundle> bundle = global_bundle();
  if (!bundle) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": no global model (initialize or load_state first)");
  }
  std::vector<TaskSpec> tasks;
  const RoundOptions& r = options_.round;
  if (round < total_rounds_ || (r.fraction_evaluate == 0 && r.min_evaluate_clients == 0)) {
    return tasks;
  }
  // Every available client (the code adapts all of them): a fraction of 1 draws nothing.
  FEDTAIL_ASSIGN_OR_RETURN(
      std::vector<ClientInfo> chosen,
      sample_clients(available, /*fraction=*/1.0, r.min_evaluate_clients, rng));
  tasks.reserve(chosen.size());
  for (const ClientInfo& c : chosen) {
    TaskSpec task;
    task.client_id = c.id;
    task.bundle = bundle;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

Result<nlohmann::json> FedEtfServer::evaluate(int round, const ServerEvalContext& context) {
  (void)round;
  std::shared_ptr<const TensorBundle> global = global_bundle();
  if (!global) {
    return Status::FailedPrecondition(std::string(kName) +
                                      ": no global model (initialize or load_state first)");
  }
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle folded, folded_model(*global));
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json out,
                           evaluate_classifier(model_options_, input_, folded, context));
  out["temperature"] = temperature_of(*global);
  return out;
}

Result<TensorBundle> FedEtfServer::next_global(int round, TensorBundle average) {
  (void)round;
  NamedTensor* averaged = average.find(kEtfMatrixName);
  const NamedTensor* kept = global().find(kEtfMatrixName);
  if (averaged == nullptr || kept == nullptr || averaged->nbytes() != kept->nbytes()) {
    return Status::Internal(std::string(kName) + ": the round's mean has no ETF like the global's");
  }
  std::memcpy(averaged->mutable_bytes(), kept->bytes(), kept->nbytes());
  return average;
}

Status FedEtfServer::save_extra_state(TensorBundle* state) const {
  state->mutable_metadata()["total_rounds"] = total_rounds_;
  return Status::OK();
}

Status FedEtfServer::load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                                      const TensorBundle& global) {
  const std::string where = std::string(kName) + " state";
  // No tensor of FedETF's own is saved apart from the global ones: refuses any extra tensor.
  FEDTAIL_RETURN_IF_ERROR(FedAvgServer::load_extra_state(std::move(extra), metadata, global));
  const NamedTensor* classifier = global.find(kClassifierWeight);
  if (classifier == nullptr || classifier->dim() != 2) {
    return Status::InvalidArgument(where + ": no 2-D classifier tensor \"" + kClassifierWeight +
                                   "\"");
  }
  const int64_t k = classifier->shape()[0];
  FEDTAIL_RETURN_IF_ERROR(check_etf_tensors(global, k, where));
  if (!metadata.contains("total_rounds") || !metadata["total_rounds"].is_number_integer() ||
      metadata["total_rounds"].get<int64_t>() < (options_.finetune_every ? 0 : 1) ||
      metadata["total_rounds"].get<int64_t>() > std::numeric_limits<int>::max()) {
    return Status::InvalidArgument(
        where + ": metadata \"total_rounds\" is missing or not a round count" +
        (metadata.contains("total_rounds") ? " (got " + metadata["total_rounds"].dump() + ")"
                                           : std::string()));
  }
  // FedAvgServer::load_state has validated these already.
  FEDTAIL_ASSIGN_OR_RETURN(ModelOptions model_options,
                           parse_model_options(metadata["model"], "state.model"));
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions input,
                           parse_augment_options(metadata["input"], "state.input"));

  model_options_ = model_options;
  input_ = std::move(input);
  total_rounds_ = metadata["total_rounds"].get<int>();
  return Status::OK();
}

}  // namespace fedtail::strategies
