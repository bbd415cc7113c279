// CCVR (Luo et al., "No Fear of Heterogeneity: Classifier Calibration for Federated Learning with
// Non-IID Data", NeurIPS 2021): FedAvg, plus a post-hoc calibration of the global classifier on
// virtual features sampled from the clients' class-conditional feature Gaussians. There is no
// official code; this follows the paper's formulas and FL-bench (KarhouTam/FL-bench,
// src/{client,server}/ccvr.py).
//
// Rounds are of two kinds:
//   - training rounds: plain FedAvg (FedAvgServer, FedAvgClient): RoundOptions::fraction_fit of
//     the clients train the global model, the server averages;
//   - statistics rounds: no client trains. Every available client (fraction_fit is ignored; fewer
//     than min_fit_clients available is kFailedPrecondition, as for FedAvg) gets the trained
//     global model and the task config {"ccvr": "statistics"}; it runs its whole training set
//     through the backbone in eval mode (BatchNorm running statistics) without augmentation, and
//     uploads the per-class count, mean and unbiased covariance of the features (the input of the
//     "classifier" head), as class_gaussians.h describes ("ccvr.count" int64 [K], "ccvr.mean"
//     float64 [K, d], "ccvr.cov" float32 [K, d, d]; every class, dense), with num_examples = the
//     training set size. The server pools them per class as they arrive (GaussianPool), samples
//     `samples_per_class` virtual features from N(mu_c, Sigma_c) for each class with N_c >= 2,
//     and trains a copy of the global "classifier" head on them (calibrate_classifier). The
//     backbone is untouched.
//
// Schedule: round r (from 1) of T = RunContext::total_rounds is a statistics round when r == T or
// (calibrate_every > 0 and r % calibrate_every == 0). calibrate_every 0 (default) is the paper's
// post-hoc calibration of the final model (T - 1 training rounds, then one statistics round, as
// the FedETF authors' CCVR baseline runs it); with calibrate_every 2 and T = 5, rounds 2, 4 and 5
// are statistics rounds. T is read in initialize() and kept in the saved state: on resume only
// load_state() is called, and the coordinator refuses to resume with another config (rounds
// included), so the saved T is the run's.
//
// Models: after a successful statistics round the server holds two: the trained global model
// (FedAvg's; training rounds keep training it, as FL-bench restores the uncalibrated model), and
// a calibrated copy (the trained model with the calibrated classifier). Until the next training
// round replaces the trained model, the calibrated copy is what evaluate() scores ("generic"),
// what configure_evaluate() sends to clients (personalised accuracy: the calibrated model on each
// client's test set, as for FedAvg) and what global_bundle() returns (final_model.bundle). Then
// the copy is dropped and everything uses the trained model again, as FedAvg would. evaluate()
// also reports the trained model as "generic_uncalibrated" (the same report as "generic" when no
// calibrated copy exists). A statistics round with too few valid updates keeps both models.
//
// Randomness: the virtual features of round r come from Rng::derive(seed, "ccvr-sample", {r}),
// class by class in class order; the calibration's batch order from Rng::derive(seed,
// "ccvr-calibrate", {r}); seed is the run seed (config.seed), kept in the saved state.
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "calibrate_every"         0     0: only the last round is a statistics round; k >= 2:
//                                   also every k-th round (1 is refused: no round would train)
//   "samples_per_class"       200   virtual features per class, >= 1 (FL-bench's default)
//   "calibration_epochs"      1     passes over the virtual features, >= 1 (FL-bench's default)
//   "calibration_lr"          config.local.lr   SGD step size, > 0 (FL-bench: the local lr);
//                                   plain SGD: no momentum, no weight decay
//   "calibration_batch_size"  config.local.batch_size   >= 1 (FL-bench: the local batch size)
// The two defaults taken from config.local are resolved by initialize() and saved in the state.
// Heterogeneous model groups (config.model.groups) are refused, as by FedAvg.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_CCVR_CCVR_H_
#define FEDTAIL_STRATEGIES_CCVR_CCVR_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/ccvr/class_gaussians.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The task config key, and its value, that make a fit task a statistics task.
inline constexpr char kCcvrTaskKey[] = "ccvr";
inline constexpr char kCcvrStatisticsTask[] = "statistics";

struct CcvrOptions {
  RoundOptions round;
  // 0: only the last round is a statistics round; k >= 2: also rounds k, 2k, ... Default 0.
  int calibrate_every = 0;
  // Virtual features drawn per class (>= 1). Default 200.
  int samples_per_class = 200;
  // Passes of SGD over the virtual features (>= 1). Default 1.
  int calibration_epochs = 1;
  // SGD step size (> 0); 0 = not given: config.local.lr.
  double calibration_lr = 0;
  // Virtual features per SGD step (>= 1); 0 = not given: config.local.batch_size.
  int calibration_batch_size = 0;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.samples_per_class: must be >= 1 (got 0)") or an unknown key.
Result<CcvrOptions> parse_ccvr_options(const nlohmann::json& config);

// How calibrate_classifier trains.
struct CalibrationOptions {
  double lr = 0.01;     // SGD step size, > 0
  int epochs = 1;       // passes over the features, >= 1
  int batch_size = 32;  // features per step, >= 1; the last batch holds the remainder
};

struct CalibrationResult {
  torch::Tensor weight;  // float32 [K, d], CPU
  torch::Tensor bias;    // float32 [K], CPU; undefined when the input bias was
  double mean_loss = 0;  // example-weighted mean cross-entropy over all steps (before each step)
  int64_t steps = 0;
};

// Trains a copy of the linear classifier (weight K×d, bias K or undefined) on `features` (float
// N×d) with `labels` (int64 N, in [0, K)) by plain SGD on the mean cross-entropy of each batch:
// options.epochs passes, each in an order drawn from `rng` (Rng::shuffle of 0..N-1), on the CPU,
// in float32. The inputs are not modified. kInvalidArgument for a bad option or mismatched shapes;
// kInternal for a LibTorch failure or a non-finite loss.
Result<CalibrationResult> calibrate_classifier(const torch::Tensor& weight,
                                               const torch::Tensor& bias,
                                               const torch::Tensor& features,
                                               const torch::Tensor& labels,
                                               const CalibrationOptions& options, Rng& rng);

class CcvrServer final : public FedAvgServer {
 public:
  // Refused: it needs each client's feature statistics.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition("it needs each client's feature statistics");
  }
  explicit CcvrServer(const CcvrOptions& options);

  // FedAvgServer::initialize, then reads T = run.total_rounds (>= 1, else kInvalidArgument), the
  // run seed and the calibration defaults from run.config->local.
  Status initialize(const RunContext& run, Rng& rng) override;

  // Statistics rounds: one task per available client (sorted by id), each with the trained global
  // bundle and config {"ccvr": "statistics"}; kFailedPrecondition when fewer than min_fit_clients
  // are available. Training rounds: FedAvgServer::configure_fit (the trained global model, never
  // the calibrated copy). kFailedPrecondition before initialize/load_state.
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // Statistics rounds: an Aggregation over GaussianPool. add() refuses a second update from a
  // client ("client X sent a second update this round") and whatever GaussianPool::check refuses
  // (the message names the tensor). finish() pools, samples, calibrates and installs the
  // calibrated copy, returning
  //   {"updated": true, "calibrated": true, "updates", "failures", "examples",
  //    "classes_calibrated" (classes with N_c >= 2), "virtual_features", "calibration_loss"
  //    (calibrate_classifier's mean_loss), "calibration_steps", "jittered_classes",
  //    "eigen_classes" (covariances that needed jitter / the eigendecomposition)}
  // or, keeping both models as they are, the same with "updated" and "calibrated" false and a
  // "reason": failures with accept_failures false, fewer valid updates than min_fit_clients, or
  // no class with N_c >= 2. Errors of sampling or calibration fail finish().
  // Training rounds: FedAvgServer's Aggregation; a round that updates the global model drops the
  // calibrated copy. Its metrics are FedAvg's plus "calibrated": false.
  // The Aggregation borrows this server, which must outlive it. kFailedPrecondition before
  // initialize/load_state.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // FedAvgServer::configure_evaluate (same sampling), with the calibrated copy as the bundle when
  // there is one.
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;

  // {"generic", "generic_by_count_rule"} of global_bundle() (evaluate_classifier), plus
  // "generic_uncalibrated" and "generic_uncalibrated_by_count_rule" of the trained model, and
  // "calibrated": whether the first two are of the calibrated copy.
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  // The calibrated copy when there is one, else the trained global model; null before
  // initialize/load_state. The calibrated copy's metadata is the trained model's plus
  // "calibrated_round".
  std::shared_ptr<const TensorBundle> global_bundle() const override;

  // Whether round `round` (from 1) is a statistics round (schedule in the file comment). False
  // before initialize/load_state.
  bool is_statistics_round(int round) const;

  // The trained (uncalibrated) global model; null before initialize/load_state.
  std::shared_ptr<const TensorBundle> trained_bundle() const {
    return FedAvgServer::global_bundle();
  }
  // The calibrated copy, or null.
  std::shared_ptr<const TensorBundle> calibrated_bundle() const { return calibrated_; }

  // Resolved settings (0 before initialize/load_state).
  int total_rounds() const { return total_rounds_; }
  double calibration_lr() const { return calibration_lr_; }
  int calibration_batch_size() const { return calibration_batch_size_; }

 protected:
  // Adds metadata "ccvr": {"total_rounds", "seed", "calibration_lr", "calibration_batch_size",
  // "calibrated_metadata" (the copy's metadata, or null)} and, with a calibrated copy, its
  // classifier as "calibrated/heads.classifier.weight" (and ".bias"); its backbone is the trained
  // model's, saved by the base.
  Status save_extra_state(TensorBundle* state) const override;
  // Reads back what save_extra_state wrote (and the base's "model" and "input" metadata, for
  // evaluation). kInvalidArgument for missing or malformed "ccvr" metadata, a calibrated tensor
  // missing, unexpected, or not shaped like the global classifier's.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class CcvrStatisticsAggregation;
  friend class CcvrTrainingAggregation;

  // The body of CcvrStatisticsAggregation::finish.
  Result<nlohmann::json> finish_statistics(int round, const GaussianPool& pool,
                                           const std::vector<ClientFailure>& failures);
  // K and d from the trained model's classifier weight.
  Status classifier_shape(int64_t* num_classes, int64_t* feature_dim) const;

  // Constant after construction.
  const CcvrOptions options_;

  // Set by initialize or load_state.
  ModelOptions model_options_;  // rebuilds the model for evaluate()
  AugmentOptions input_;        // input normalisation for evaluate()
  int total_rounds_ = 0;        // T; 0 = not initialized
  uint64_t seed_ = 0;           // the run seed
  double calibration_lr_ = 0;
  int calibration_batch_size_ = 0;

  // The calibrated copy of the trained global model, or null (none since the last training
  // round that updated the model). Its tensors other than the classifier's are the trained
  // model's, bit for bit.
  std::shared_ptr<const TensorBundle> calibrated_;
};

// The CCVR client. fit: with task config {"ccvr": "statistics"}, loads the task's bundle into
// context.model (strictly), extracts the features of the whole training set (extract_features:
// eval mode, no augmentation, batches of config.eval.batch_size) and returns their
// class_statistics, with num_examples = the training set size and metrics {"statistics": true,
// "classes": classes present}; without a "ccvr" key, FedAvgClient::fit. evaluate:
// FedAvgClient::evaluate (the bundle is the calibrated copy when there is one).
// Errors: kInvalidArgument for another "ccvr" value, a context without model, config or
// training data, or a bundle that does not fit the model; kFailedPrecondition for an empty
// training set (statistics); those of FedAvgClient; kInternal for a LibTorch failure.
class CcvrClient final : public FedAvgClient {
 public:
  CcvrClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
};

// Factories for the registry: config.strategy is parsed with parse_ccvr_options.
Result<std::unique_ptr<ServerStrategy>> make_ccvr_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_ccvr_client(const nlohmann::json& config);

// The registry entry "ccvr".
StrategyEntry ccvr_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_CCVR_CCVR_H_
