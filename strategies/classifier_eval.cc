#include "strategies/classifier_eval.h"

#include <torch/torch.h>

#include <exception>
#include <string>

#include "common/learning/feature_cache.h"
#include "common/learning/metrics.h"
#include "common/learning/torch_bundle.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"

namespace fedtail::strategies {
namespace {

// Adds to `model` every head "heads.<name>" that `bundle` has and the model lacks, so that a
// strict load succeeds for global models with extra heads.
Status add_bundle_heads(const TensorBundle& bundle, Model& model) {
  const std::string prefix = "heads.";
  const std::string suffix = ".weight";
  for (const NamedTensor& t : bundle) {
    const std::string& n = t.name();
    if (n.size() <= prefix.size() + suffix.size() || n.compare(0, prefix.size(), prefix) != 0 ||
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string head = n.substr(prefix.size(), n.size() - prefix.size() - suffix.size());
    if (head.find('.') != std::string::npos || model->has_head(head)) continue;
    if (t.dim() != 2) {
      return Status::InvalidArgument("tensor \"" + n + "\": a head weight must be 2-D (got " +
                                     shape_to_string(t.shape()) + ")");
    }
    const bool bias = bundle.contains(prefix + head + ".bias");
    FEDTAIL_RETURN_IF_ERROR(model->add_head(head, t.shape()[0], bias));
  }
  return Status::OK();
}

}  // namespace

Result<ModelOptions> run_model_options(const RunContext& run) {
  if (run.config == nullptr) return Status::FailedPrecondition("RunContext: config is null");
  ModelOptions options = run.config->model;
  if (!options.groups.empty()) {
    return Status::InvalidArgument(
        "config.model.groups: this strategy trains one global model, so every client needs the "
        "same architecture (config.model.arch); heterogeneous model groups need a strategy "
        "without a global model (fedsa, fedproto)");
  }
  if (options.num_classes == 0) options.num_classes = run.num_classes;
  FEDTAIL_RETURN_IF_ERROR(validate_model_options(options).with_context("config"));
  return options;
}

nlohmann::json model_options_to_json(const ModelOptions& o) {
  nlohmann::json json = {{"arch", o.arch},
                         {"feature_dim", o.feature_dim},
                         {"in_channels", o.in_channels},
                         {"image_size", o.image_size},
                         {"num_classes", o.num_classes}};
  if (o.arch == kTorchScriptArch) {
    json["path"] = o.path;
    json["sha256"] = o.sha256;
  }
  return json;
}

nlohmann::json augment_options_to_json(const AugmentOptions& o) {
  return {{"crop_padding", o.crop_padding},
          {"horizontal_flip", o.horizontal_flip},
          {"normalize", o.normalize},
          {"mean", o.mean},
          {"std", o.std}};
}

Result<nlohmann::json> evaluate_classifier(const ModelOptions& model_options,
                                           const AugmentOptions& input, const TensorBundle& bundle,
                                           const ServerEvalContext& context) {
  if (context.test == nullptr) {
    return Status::InvalidArgument("evaluate_classifier: no test set");
  }
  const Dataset& test = *context.test;
  ModelOptions options = model_options;
  if (test.size() > 0) FEDTAIL_RETURN_IF_ERROR(fill_model_options_from_data(test, &options));
  Rng init_rng(0);  // the weights are overwritten by the bundle
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(options, init_rng));
  FEDTAIL_RETURN_IF_ERROR(add_bundle_heads(bundle, model));
  FEDTAIL_RETURN_IF_ERROR(
      load_module_state(*model, bundle, /*strict=*/true).with_context("global model"));

  const int num_classes = static_cast<int>(model->num_classes());
  std::vector<int64_t> counts = context.train_class_counts;
  if (counts.empty()) counts.assign(num_classes, 0);  // no counts known: every class is Many
  const ClassGroups by_share = groups_by_cumulative_share(counts);
  const ClassGroups by_count = groups_by_threshold(counts);
  if (test.size() == 0) {
    AccuracyReport empty_share, empty_count;
    empty_share.groups = by_share;
    empty_count.groups = by_count;
    return nlohmann::json{{"generic", empty_share.to_json()},
                          {"generic_by_count_rule", empty_count.to_json()}};
  }
  FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor predictions,
                           predict(model, test, input, context.device, context.batch_size));
  FEDTAIL_ASSIGN_OR_RETURN(AccuracyReport share,
                           accuracy_report(predictions, test.labels, num_classes, by_share));
  FEDTAIL_ASSIGN_OR_RETURN(AccuracyReport count,
                           accuracy_report(predictions, test.labels, num_classes, by_count));
  return nlohmann::json{{"generic", share.to_json()}, {"generic_by_count_rule", count.to_json()}};
}

Result<nlohmann::json> evaluate_classifier_on_client(const ClientContext& context, Model& model,
                                                     const PayloadDigest* backbone_version) {
  if (context.config == nullptr) {
    return Status::InvalidArgument("evaluate_classifier_on_client: no run config");
  }
  const RunConfig& config = *context.config;
  const int64_t num_classes = model->num_classes();
  const bool masked = config.eval.mask_absent_classes;
  nlohmann::json out = {{"correct", 0},
                        {"examples", 0},
                        {"per_class_correct", std::vector<int64_t>(num_classes, 0)},
                        {"per_class_examples", std::vector<int64_t>(num_classes, 0)},
                        {"masked", masked}};
  if (context.test == nullptr || context.test->size() == 0) return out;
  const Dataset& test = *context.test;

  std::vector<int64_t> train_counts;
  if (masked && context.train != nullptr && context.train->size() > 0) {
    train_counts = context.train->class_counts();
  }
  Model m = model;
  LogitsFn logits_fn = [m, masked, &train_counts](const torch::Tensor& features) {
    torch::Tensor logits = m->head(kClassifierHead)->forward(features);
    return masked ? mask_absent_classes(logits, train_counts) : logits;
  };
  const bool shared = backbone_version != nullptr && context.test_features != nullptr &&
                      context.test_rows != nullptr &&
                      static_cast<int64_t>(context.test_rows->size()) == test.size();
  FEDTAIL_ASSIGN_OR_RETURN(
      torch::Tensor predictions,
      shared ? context.test_features->predict_with(model, *backbone_version, *context.test_rows,
                                                   logits_fn, config.local.augment, context.device,
                                                   config.eval.batch_size)
             : predict_with(model, test, logits_fn, config.local.augment, context.device,
                            config.eval.batch_size));
  try {
    torch::Tensor labels = test.labels.to(torch::kCPU);
    torch::Tensor hits = predictions.to(torch::kCPU).eq(labels);
    torch::Tensor per_class_examples = torch::bincount(labels, {}, num_classes);
    torch::Tensor per_class_correct = torch::bincount(labels.masked_select(hits), {}, num_classes);
    if (per_class_examples.size(0) != num_classes) {
      return Status::InvalidArgument("evaluate_classifier_on_client: a test label is >= " +
                                     std::to_string(num_classes) + " classes");
    }
    auto to_vector = [](const torch::Tensor& t) {
      torch::Tensor c = t.to(torch::kInt64).contiguous();
      return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
    };
    out["correct"] = hits.sum().item<int64_t>();
    out["examples"] = test.size();
    out["per_class_correct"] = to_vector(per_class_correct);
    out["per_class_examples"] = to_vector(per_class_examples);
  } catch (const std::exception& e) {
    return torch_failure("evaluate_classifier_on_client", e);
  }
  return out;
}

nlohmann::json aggregate_personalized_accuracy(const std::vector<EvalReport>& reports,
                                               const std::vector<ClientFailure>& failures) {
  std::vector<ClientAccuracy> clients;
  nlohmann::json invalid = nlohmann::json::array();
  bool masked = false;
  for (const EvalReport& r : reports) {
    const nlohmann::json& m = r.metrics;
    const bool valid = m.is_object() && m.contains("correct") && m.contains("examples") &&
                       m["correct"].is_number_integer() && m["examples"].is_number_integer() &&
                       m["correct"].get<int64_t>() >= 0 &&
                       m["correct"].get<int64_t>() <= m["examples"].get<int64_t>() &&
                       m["examples"].get<int64_t>() <= kMaxReportedExamples;
    if (!valid) {
      invalid.push_back(r.client_id);
      continue;
    }
    clients.push_back({m["correct"].get<int64_t>(), m["examples"].get<int64_t>()});
    if (m.contains("masked") && m["masked"].is_boolean() && m["masked"].get<bool>()) masked = true;
  }
  return {{"personalized", personalized_accuracy(clients).to_json()},
          {"masked", masked},
          {"reports", reports.size()},
          {"failures", failures.size()},
          {"invalid_reports", invalid}};
}

}  // namespace fedtail::strategies
