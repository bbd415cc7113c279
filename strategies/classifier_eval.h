// Evaluation helpers shared by strategies whose global model is a Model scored by its
// "classifier" head (FedAvg, FedProx, FedAvgM...), implementing the evaluation protocol
// (README.md):
//   - generic accuracy: the global bundle on the coordinator's balanced test set, overall and by
//     Many/Medium/Few group under both rules (cumulative share 75%/95%, and counts
//     >100/20–100/<20);
//   - personalised accuracy: each client scores a model on its own test set (optionally masking the
//     classes absent from its training data, eval.mask_absent_classes), the server combines the
//     counts into the plain and the sample-weighted mean over clients.
//
// Free functions; reentrant. LibTorch exceptions are caught and returned as kInternal.
#ifndef FEDTAIL_STRATEGIES_CLASSIFIER_EVAL_H_
#define FEDTAIL_STRATEGIES_CLASSIFIER_EVAL_H_

#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/wire/payload_digest.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The run's model options (config.model) with num_classes taken from run.num_classes when 0,
// validated for make_model. kFailedPrecondition when run.config is null; kInvalidArgument naming
// config.model.groups when the config lists model groups (a single global model needs a single
// architecture: FedAvg, FedProx, FedLoGe refuse heterogeneous federations this way), or (from
// validate_model_options, naming the field) when a field is still unknown, e.g. in_channels when
// the caller did not fill the options from the data.
Result<ModelOptions> run_model_options(const RunContext& run);

// Every field as JSON, for strategy states that must rebuild the model without the run config;
// parse_model_options / parse_augment_options read them back.
nlohmann::json model_options_to_json(const ModelOptions& options);
nlohmann::json augment_options_to_json(const AugmentOptions& options);

// Builds a Model from `model_options` (fields still 0 are filled from context.test), adds any head
// "heads.<name>.weight" of `bundle` the model lacks, loads `bundle` strictly, and scores the
// "classifier" head on context.test with inputs normalised by `input` (the run's
// local.augment). Returns {"generic": AccuracyReport JSON with groups by cumulative share of
// context.train_class_counts, "generic_by_count_rule": the same with groups by threshold}.
// Errors: kInvalidArgument when context.test is null or the bundle does not fit the model
// (naming the tensor); those of make_model and predict.
Result<nlohmann::json> evaluate_classifier(const ModelOptions& model_options,
                                           const AugmentOptions& input, const TensorBundle& bundle,
                                           const ServerEvalContext& context);

// Scores `model` as it is (its "classifier" head) on context.test, normalising inputs by
// context.config->local.augment, in batches of context.config->eval.batch_size, on
// context.device. With config.eval.mask_absent_classes the logits of classes absent from
// context.train are -inf. Returns {"correct", "examples", "per_class_correct": [K],
// "per_class_examples": [K], "masked": bool}; an empty or null test set gives zero counts.
// kInvalidArgument when context.config is null.
// `backbone_version`: the digest of the bundle whose backbone `model` holds unchanged (e.g. the
// task's global bundle), or null. With it, and where the host offers a feature cache
// (context.test_features), the backbone's features are shared with the worker's other clients
// that evaluate the same version; the result is the same bit for bit.
Result<nlohmann::json> evaluate_classifier_on_client(
    const ClientContext& context, Model& model, const PayloadDigest* backbone_version = nullptr);

// Combines the clients' evaluate_classifier_on_client reports into
// {"personalized": {"mean", "weighted", "clients"}, "masked": bool (any report masked),
//  "reports": n, "failures": m, "invalid_reports": [client ids]}. A report without non-negative
// integer "correct" <= "examples" is listed as invalid and left out, not an error.
constexpr int64_t kMaxReportedExamples = int64_t{1} << 40;
nlohmann::json aggregate_personalized_accuracy(const std::vector<EvalReport>& reports,
                                               const std::vector<ClientFailure>& failures);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_CLASSIFIER_EVAL_H_
