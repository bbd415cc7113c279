// CReFF (Shang et al., "Federated Learning on Heterogeneous and Long-Tailed Data via Classifier
// Re-Training with Federated Features", IJCAI 2022): FedAvg, plus a classifier re-trained every
// round on "federated features" that the server learns by matching the gradients the clients
// compute on their real data. As the authors' code does it (github.com/shangxinyi/CReFF-FL,
// main.py, options.py, Dataset/Gradient_matching_loss.py):
//
//   - Server state: the FedAvg global model; the federated features F, (K·ipc)×d (d the model's
//     feature_dim, ipc = features_per_class), rows c·ipc … (c+1)·ipc−1 labelled c, drawn once from
//     N(0, 1) and kept across rounds; the synthetic classifier (W, b), K×d and K, the classifier
//     re-trained in the previous round (before round 1 a fresh Linear(d, K) with PyTorch's default
//     init, uniform ±1/sqrt(d) for weight and bias, default_linear).
//   - Every global bundle is the FedAvg model's state plus (W, b) as kCreffClassifierWeight and
//     kCreffClassifierBias ("creff.classifier.weight" / ".bias": no '/', so FedAvgServer keeps them
//     with the global tensors in its saved state, as FedETF keeps its ETF).
//   - Client fit (CreffClient):
//       1. Gradient upload: the global backbone in eval mode (BatchNorm running statistics) with
//          (W, b) in place of the classifier head. gradient_repeats times, for each class c the
//          client holds (in class order): up to gradient_batch of its images of class c drawn
//          without replacement, augmented by config.local.augment's training path, and the
//          gradient of the mean cross-entropy of that batch w.r.t. W and b; the repeats are
//          averaged. Uploaded for the classes it holds only (ClassGradientPool's wire form).
//       2. Local training exactly as FedAvgClient trains (FedAvgClient::train: train_local with
//          config.local, its loss included) from the global model with the FedAvg classifier
//          (not (W, b)); upload of the whole model state. num_examples = the training set size.
//     Randomness: step 1 draws from Rng::derive(<one draw of the task's Rng>, "creff-gradients"),
//     step 2 then continues with the task's Rng.
//   - Server round (CreffServer): (1) the example-weighted mean of the uploaded models (FedAvg,
//     WeightedAverage) is the next global model; (2) per class, the real gradient is the
//     UNWEIGHTED mean over the clients that uploaded that class (ClassGradientPool); (3)
//     match_steps steps of plain SGD (feature_lr, no momentum) on F minimising the summed
//     gradient-matching distance (gradient_match_distance) between the real gradients and those
//     of (W, b) on F (match_features); (4) a NEW default_linear Linear(d, K) trained on all of F
//     (detached): retrain_epochs epochs of plain SGD (retrain_lr) on the mean CE of shuffled
//     batches of retrain_batch_size (retrain_classifier). It becomes (W, b) of the next global
//     bundle; the FedAvg classifier stays the global model's "heads.classifier.*".
//   - Evaluation: "generic" is the FedAvg backbone with the re-trained classifier (W, b) in its
//     "classifier" head (global_bundle(), also what configure_evaluate sends to clients for the
//     personalised accuracy, which the code does not measure); "generic_fedavg" beside it is the
//     FedAvg model as it is, so that the effect of the re-training stays visible.
//
// Randomness: F and the first (W, b) come from Rngs derived from initialize()'s Rng; the
// re-training of round r (its initial Linear, then each epoch's order) from
// Rng::derive(seed, "creff-retrain", {r}), seed = the run seed (config.seed, kept in the saved
// state). Feature matching draws nothing.
//
// Cost: the server's work per round is about match_steps double-backward passes over the K·ipc
// features (a few batched matmuls of K·ipc×d by d×K each) plus retrain_epochs·K·ipc/
// retrain_batch_size SGD steps on a Linear, on the CPU in float32. Measured on one busy CPU
// thread with the defaults and d = 256: K = 10, about 0.4 s matching + 1 s re-training (9,600
// steps) per round; K = 100, about 14 s + 28 s (93,900 steps). A client uploads 4·m·K·(d+1) bytes
// of gradients for the m classes it holds (m = K = 100, d = 256: 10 MB); the server keeps per class
// it receives one float64 K×d sum (at most 8·K²·(d+1) bytes).
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h); defaults from options.py:
//   "features_per_class"  100   ipc, federated features per class, >= 1 (num_of_feature)
//   "match_steps"         100   feature-matching SGD steps per round, >= 0 (match_epoch)
//   "feature_lr"          0.1   their SGD step size, > 0 (lr_feature)
//   "retrain_epochs"      300   classifier re-training epochs per round, >= 1 (crt_epoch)
//   "retrain_lr"          0.01  its SGD step size, > 0 (lr_net)
//   "retrain_batch_size"  32    its batch size, >= 1 (batch_size_local_training)
//   "gradient_batch"      32    real images per class per gradient, >= 1 (batch_real)
//   "gradient_repeats"    10    gradients averaged per class, >= 1 (the code's fixed 10)
// Local training is config.local, shared by every strategy (the paper's: 10 epochs, batch 32,
// SGD lr 0.1 without momentum or weight decay; set them there). config.local.loss applies to the
// local training (any kind); the gradient upload uses plain CE, as the paper. Heterogeneous model
// groups (config.model.groups) are refused.
//
// Differences from the authors' code, on purpose: the real images of the gradient upload get
// fedtail's training augmentation (config.local.augment: random crop and flip) rather than DSA's
// differentiable Siamese augmentation; the synthetic gradient of (W, b) is computed in closed form,
// (softmax − onehot)ᵀF / ipc, for all classes at once (the same function as the code's
// autograd.grad(create_graph=True), to rounding; the tests compare both), so that matching runs as
// batched matmuls; the per-class real gradients are summed in float64 (the mean does not depend
// on the order in which uploads arrive); F, the initial and re-trained Linears and the orders come
// from fedtail's Rng rather than the global torch generator; clients are sampled by RoundOptions.
// A row of a real gradient that is all zero follows the code's formula (cosine with eps 1e-6 is 0:
// the row adds 1 to the distance, a constant without gradient).
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
// Free functions are reentrant.
#ifndef FEDTAIL_STRATEGIES_CREFF_CREFF_H_
#define FEDTAIL_STRATEGIES_CREFF_CREFF_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/ccvr/ccvr.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The synthetic classifier (W, b) in every global bundle: float32 [K, d] and [K].
inline constexpr char kCreffClassifierWeight[] = "creff.classifier.weight";
inline constexpr char kCreffClassifierBias[] = "creff.classifier.bias";
// A client's gradient upload, beside its model state (m = the classes it holds, 0 <= m <= K):
//   "creff.classes"      int64   [m]        the classes, strictly increasing, in [0, K)
//   "creff.grad_weight"  float32 [m, K, d]  row i: the mean gradient of W for class classes[i]
//   "creff.grad_bias"    float32 [m, K]     row i: the same for b
inline constexpr char kCreffClassesTensor[] = "creff.classes";
inline constexpr char kCreffGradWeightTensor[] = "creff.grad_weight";
inline constexpr char kCreffGradBiasTensor[] = "creff.grad_bias";
// The federated features F in the saved state: float32 [K·ipc, d].
inline constexpr char kCreffFeaturesState[] = "creff/features";

struct CreffOptions {
  RoundOptions round;
  int features_per_class = 100;  // ipc, >= 1
  int match_steps = 100;         // >= 0
  double feature_lr = 0.1;       // > 0
  int retrain_epochs = 300;      // >= 1
  double retrain_lr = 0.01;      // > 0
  int retrain_batch_size = 32;   // >= 1
  int gradient_batch = 32;       // >= 1
  int gradient_repeats = 10;     // >= 1
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.features_per_class: must be >= 1 (got 0)") or an unknown key.
Result<CreffOptions> parse_creff_options(const nlohmann::json& config);

// ---------------------------------------------------------------------------------------------
// Federated features (creff_features.cc)

// A Linear(in_features, out_features) as PyTorch initialises it: weight [out, in] then bias [out],
// each uniform in ±1/sqrt(in_features), drawn from `rng` (Rng::uniform, row by row, weight first);
// float32 on the CPU. The same Rng state gives the same bits. Precondition: both sizes >= 1.
std::pair<torch::Tensor, torch::Tensor> default_linear(int64_t out_features, int64_t in_features,
                                                       Rng& rng);

// The gradients of the mean cross-entropy CE(x Wᵀ + b, c) w.r.t. W and b, for each class's rows:
// `features` [m, n, d] (row block i all labelled classes[i]; n >= 1), `classes` int64 [m] in
// [0, K), `weight` [K, d], `bias` [K]. Returns [m, K, d] and [m, K], differentiable w.r.t.
// `features` (closed form: (softmax − onehot)ᵀ x / n and the mean of softmax − onehot). Throws
// c10::Error on mismatched shapes.
std::pair<torch::Tensor, torch::Tensor> class_classifier_gradients(const torch::Tensor& features,
                                                                   const torch::Tensor& classes,
                                                                   const torch::Tensor& weight,
                                                                   const torch::Tensor& bias);

// The code's gradient-matching distance for each of m classes: Σ over the K rows r of
// 1 − ⟨R_w[r], S_w[r]⟩ / (‖R_w[r]‖·‖S_w[r]‖ + 1e-6), plus the same term for the bias vectors R_b
// and S_b taken as one row. `real_weight`, `syn_weight` [m, K, d]; `real_bias`, `syn_bias` [m, K].
// Returns [m] (each in [0, 2(K+1)]), differentiable w.r.t. the syn tensors. Throws c10::Error on
// mismatched shapes.
torch::Tensor gradient_match_distance(const torch::Tensor& real_weight,
                                      const torch::Tensor& real_bias,
                                      const torch::Tensor& syn_weight,
                                      const torch::Tensor& syn_bias);

struct MatchResult {
  torch::Tensor features;       // float32 [K·ipc, d], CPU: the matched features
  double first_distance = 0;    // Σ over the matched classes, before the first step
  double last_distance = 0;     // the same after the last step (== first_distance for 0 steps)
  int64_t matched_classes = 0;  // classes with a real gradient
};

// Feature matching: `steps` steps of plain SGD with step size `lr` on a copy of `features`
// (float [K·ipc, d], rows grouped by class in class order, `per_class` = ipc rows each), each on
// Σ_i gradient_match_distance(real_weight[i], real_bias[i], the gradients of (W, b) =
// (`weight`, `bias`) on class classes[i]'s rows). `classes` (strictly increasing, in [0, K)) are
// the classes with a real gradient (`real_weight` [m, K, d], `real_bias` [m, K]); the other rows
// are not changed. CPU, float32; the inputs are not modified. kInvalidArgument for mismatched
// shapes, bad classes, steps < 0 or lr <= 0; kInternal for a LibTorch failure or a non-finite
// distance.
Result<MatchResult> match_features(const torch::Tensor& features, int64_t per_class,
                                   const std::vector<int64_t>& classes,
                                   const torch::Tensor& real_weight, const torch::Tensor& real_bias,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   int steps, double lr);

// Classifier re-training: a default_linear(K, d) drawn from `rng`, then calibrate_classifier
// (strategies/ccvr/ccvr.h) with options.retrain_lr / retrain_epochs / retrain_batch_size on
// `features` [K·per_class, d] (detached) labelled by row block (0 … 0, 1 … 1, …), its batch
// orders drawn from `rng` after the initialisation. kInvalidArgument when the rows are not
// K·per_class or K < 1; the errors of calibrate_classifier.
Result<CalibrationResult> retrain_classifier(const torch::Tensor& features, int64_t per_class,
                                             int64_t num_classes, const CreffOptions& options,
                                             Rng& rng);

// ---------------------------------------------------------------------------------------------
// Pooling the clients' gradients (creff_features.cc)

// The server's side of one round's gradient uploads: per class, the sum of the clients' gradients
// (float64) and how many clients sent one. Move-only value; memory grows by 8·K·(d+1) bytes per
// class first received.
class ClassGradientPool {
 public:
  // An empty pool for K = num_classes and d = feature_dim (both >= 1, else kInvalidArgument).
  static Result<ClassGradientPool> create(int64_t num_classes, int64_t feature_dim);

  ClassGradientPool(ClassGradientPool&&) noexcept = default;
  ClassGradientPool& operator=(ClassGradientPool&&) noexcept = default;
  ClassGradientPool(const ClassGradientPool&) = delete;
  ClassGradientPool& operator=(const ClassGradientPool&) = delete;

  // OK when `upload` holds exactly the three gradient tensors (names above) in their wire form;
  // otherwise, naming the tensor: kInvalidArgument for one missing, of another dtype or shape
  // ("tensor \"creff.grad_weight\": float32 [3,2,16] != expected float32 [2,2,16]": gradients for
  // classes that "creff.classes" does not list), a class outside [0, K) or not strictly
  // increasing, or an extra tensor; kCorruption (check_finite's message) for NaN or ±Inf.
  Status check(const TensorBundle& upload) const;

  // Folds in one client's gradients; check() first, so a refused upload changes nothing.
  Status add(const TensorBundle& upload);

  int64_t num_classes() const { return num_classes_; }
  int64_t feature_dim() const { return feature_dim_; }
  int64_t uploads() const { return uploads_; }
  // How many uploads held class c (K entries).
  const std::vector<int64_t>& holders() const { return holders_; }

  // The real gradients: the classes with at least one holder (ascending), and for each the
  // unweighted mean over its holders, as float32 [m, K, d] and [m, K] on the CPU.
  struct Means {
    std::vector<int64_t> classes;
    torch::Tensor weight;
    torch::Tensor bias;
  };
  Result<Means> means() const;

 private:
  ClassGradientPool() = default;

  // Constant after create().
  int64_t num_classes_ = 0;
  int64_t feature_dim_ = 0;

  std::vector<torch::Tensor> weight_sums_;  // K: float64 [K, d], undefined until a holder
  std::vector<torch::Tensor> bias_sums_;    // K: float64 [K]
  std::vector<int64_t> holders_;            // K
  int64_t uploads_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Server and client (creff.cc)

class CreffServer final : public FedAvgServer {
 public:
  // Refused: it needs each client's gradients to re-train the classifier.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition(
        "it needs each client's gradients to re-train the classifier");
  }
  explicit CreffServer(const CreffOptions& options);

  // Builds the model from run.config->model (num_classes from the run when 0) with draws from
  // `rng`, then (W, b) = default_linear(K, d) and F (standard normal, row by row) from two Rngs
  // derived from further draws; keeps the run seed. Errors: those of run_model_options (model
  // groups are refused) and make_model; kInvalidArgument when K·ipc·d overflows.
  Status initialize(const RunContext& run, Rng& rng) override;

  // An Aggregation that splits each update into its model state (FedAvgServer's aggregation:
  // WeightedAverage::check's refusals, "updated"/"reason" rules) and its gradients
  // (ClassGradientPool::check's refusals, naming the tensor; a "creff." tensor other than the
  // three gradient ones is refused too). A second update from a client is refused ("client X sent
  // a second update this round"). finish() returns FedAvg's metrics plus "matched_classes",
  // "match_distance_first", "match_distance_last", "retrain_loss" (calibrate_classifier's
  // mean_loss) and "retrain_steps" (zero / null when the round keeps the old state). A round that
  // updates the model also installs the matched F and the re-trained (W, b); one that does not
  // changes nothing. The Aggregation borrows this server, which must outlive it.
  // kFailedPrecondition before initialize/load_state.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // FedAvgServer::configure_fit's tasks without an expected_update: an update carries the model
  // without (W, b) plus the creff.* gradients, which begin_aggregation's Aggregation checks
  // (federation.max_update_bytes still bounds what is received).
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // FedAvgServer::configure_evaluate's clients, each with global_bundle().
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;

  // {"generic", "generic_by_count_rule"} of global_bundle() (evaluate_classifier), plus
  // "generic_fedavg" and "generic_fedavg_by_count_rule" of the FedAvg model. kFailedPrecondition
  // before initialize/load_state; the errors of evaluate_classifier.
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  // The FedAvg model with (W, b) as its "classifier" head (and without the creff.* tensors), with
  // the global bundle's metadata; null before initialize/load_state.
  std::shared_ptr<const TensorBundle> global_bundle() const override { return retrained_; }

  // The bundle clients train from: the FedAvg model plus (W, b). Null before initialize/load_state.
  std::shared_ptr<const TensorBundle> training_bundle() const {
    return FedAvgServer::global_bundle();
  }
  // F, float32 [K·ipc, d] on the CPU; undefined before initialize/load_state.
  const torch::Tensor& features() const { return features_; }
  const CreffOptions& options() const { return options_; }

 protected:
  // The round's mean with (W, b) replaced: pools the round's gradients, matches F and re-trains
  // (the file comment's steps 2–4), keeping the results pending until the round is installed.
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds F as kCreffFeaturesState and metadata "creff": {"seed"}.
  Status save_extra_state(TensorBundle* state) const override;
  // Reads back what save_extra_state wrote, after checking that `global` holds (W, b) shaped like
  // its classifier. kInvalidArgument naming what is missing, misshapen or unexpected (F must be
  // [K·features_per_class, d], this server's features_per_class).
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class CreffAggregation;

  // What next_global computed, installed once the round's model is.
  struct PendingRound {
    torch::Tensor features;
    nlohmann::json metrics;
  };

  // The body of CreffAggregation::finish: runs `fedavg`'s finish with `pool` available to
  // next_global, then installs or drops the pending state.
  Result<nlohmann::json> finish_round(Aggregation& fedavg, const ClassGradientPool& pool,
                                      const std::vector<ClientFailure>& failures);

  // Constant after construction.
  const CreffOptions options_;

  // Set by initialize or load_state, and by each round that updates the model.
  ModelOptions model_options_;                     // rebuilds the model for evaluate()
  AugmentOptions input_;                           // input normalisation for evaluate()
  uint64_t seed_ = 0;                              // the run seed
  torch::Tensor features_;                         // F
  std::shared_ptr<const TensorBundle> retrained_;  // global_bundle()

  // Valid during finish_round only.
  const ClassGradientPool* round_pool_ = nullptr;
  std::optional<PendingRound> pending_;
};

// The CReFF client. fit: loads the task's bundle into context.model (exactly the model's tensors
// plus (W, b)), computes the gradient upload, trains as FedAvgClient and returns the model's
// module_state plus the three gradient tensors, num_examples = the training set size, metrics
// {"loss", "steps", "gradient_classes" (m)}. evaluate: FedAvgClient::evaluate (the task carries
// the re-trained model). Errors: kInvalidArgument for a context without model, config, training
// data or rng, or a bundle that does not hold exactly the model's tensors and (W, b) with the
// right shapes; kFailedPrecondition for an empty training set; those of FedAvgClient::train;
// kInternal for a LibTorch failure.
class CreffClient final : public FedAvgClient {
 public:
  explicit CreffClient(const CreffOptions& options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;

 private:
  const CreffOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_creff_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_creff_client(const nlohmann::json& config);

// The registry entry "creff".
StrategyEntry creff_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_CREFF_CREFF_H_
