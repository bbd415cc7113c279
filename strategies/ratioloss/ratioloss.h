// Ratio Loss (Wang, Xu, Wang & Wang, "Addressing Class Imbalance in Federated Learning", AAAI
// 2021): FedAvg whose clients minimise a class-weighted cross-entropy, with class weights the
// server estimates every round from how the global model's classifier moves when it is trained on
// one class at a time of a small balanced auxiliary set only the server holds. As the authors'
// code does it (github.com/balanced-fl/Addressing-Class-Imbalance-FL, FEMNIST-4-Losses: main_nn.py,
// models/Fed.py outlier_detect / search_neuron_new / whole_determination, models/Update.py
// Ratio_Cross_Entropy / LocalUpdate), except where noted below.
//
// Round r (from 1), with G_r the global model the round's clients start from:
//   - Tasks (configure_fit): FedAvg's sampling (RoundOptions); every task shares one bundle: G_r's
//     tensors plus kRatioLossAlphaTensor ("ratioloss.alpha", float32 [K]), the class weights α_r.
//     Round 1 sends α = 1 for every class (plain cross-entropy: the code's alpha=None), whatever
//     the "alpha" option. The bundle is a copy of the model made per configure_fit call.
//   - Client (RatioLossClient): loads G_r (the bundle's other tensors, exactly the model's) and
//     trains it with train_local (config.local: epochs, batch_size, lr, momentum, weight_decay,
//     augment, max_steps) on ratio_cross_entropy with α_r: per batch, mean_i α_{y_i} · CE_i. With
//     α = 1 everywhere it takes train_local's plain cross-entropy path, so round 1 is FedAvg's
//     update bit for bit. The upload is the whole model state (as FedAvg's); α is not sent back.
//   - Server (the Aggregation's finish(), before the new global model is installed): for each
//     class p, in class order, a copy of G_r is trained on class p's auxiliary examples only with
//     the clients' procedure (train_local with config.local, but plain cross-entropy), its batches
//     ordered by Rng::derive(seed, "ratioloss-aux", {r, p}) (seed = config.seed, kept in the saved
//     state); class p's examples are those of RunContext::auxiliary labelled p, in their order
//     there. ratio_weights() of the "classifier" head's weight (K×d) before and after these K
//     trainings gives α_{r+1}, which replaces α_r once FedAvg's finish has succeeded (also when
//     the round keeps the old model: then G_{r+1} = G_r, from which α_{r+1} was computed). This is
//     the code's order: it trains the auxiliary copies from the model of round t and the clients
//     use the weights in round t+1. The new global model is FedAvgServer's: the example-weighted
//     mean of the uploads (the code averages uniformly, Fed.py FedAvg; fedtail's FedAvg weights by
//     examples and offers no uniform option). Using FedAvg's aggregation unchanged makes a
//     comparison with "fedavg" isolate the loss.
//
// ratio_weights (the code's search_neuron_new and whole_determination), on the classifier weight:
//   D_p = W_p − W_G for each class p (the code multiplies by 100, which cancels in the ratios).
//   Element (i, j) belongs to p* = argmax_p D_p[i, j] (the first such p on ties) when no other
//   class q has |D_q[i, j]| / |D_p*[i, j]| > dominance (strictly: a ratio equal to dominance does
//   not disqualify); when D_p*[i, j] = 0, when no other class has D_q[i, j] = 0 (the code's
//   special case). pos_p = the elements that belong to p.
//   Ra_p = |Σ_{pos_p} D_p| / |Σ_{pos_p} mean_{q≠p} D_q|, kRatioLossUndefinedRatio (10) when that
//   denominator is 0 (an empty pos_p included), then capped at max_ratio; α_p = alpha + beta · Ra_p
//   (the paper's α + β·Ra; the code fixes 1 and 0.1).
//   Computed in float64 on the CPU (the code: float32 numpy), in O(K·d) memory besides the inputs.
//
// Differences from the code, on purpose:
//   - The loss: Ratio_Cross_Entropy computes alpha[targets] (shape [N], α being a [K] tensor) times
//     log_p (shape [N, 1]); broadcasting makes that an N×N matrix whose mean is
//     mean_i(α_{y_i}) · mean_i(CE_i): a per-batch scale, not a per-example weight. We implement
//     the per-example weighting the paper and the class's docstring state,
//     mean_i α_{y_i} · CE_i (divided by the batch size, not by Σ α_{y_i} as PyTorch's weighted
//     CrossEntropyLoss would).
//   - The auxiliary training uses config.local (lr, momentum, weight_decay, epochs, batch_size,
//     max_steps, augment) rather than the code's hard-coded momentum 0.9 and weight decay 5e-4
//     (fedtail's defaults are these same values), so that the server's probe trains exactly as
//     the clients do, whatever the run sets.
//   - The auxiliary set is held out of the training data (config.data.auxiliary_per_class, the
//     last examples of each class: common/data/data_options.h); the code takes the first 63
//     training examples of each class, which the clients also hold.
//   - Sums run in float64 over the flattened elements; the code accumulates numpy float32 scalars.
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "alpha"      1.0   α_p = alpha + beta · Ra_p; > 0
//   "beta"       0.1   >= 0 (0: plain cross-entropy every round, still paying for the probe)
//   "dominance"  0.8   in (0, 1]; the |D_q| / |D_p*| threshold of the mask
//   "max_ratio"  5000  cap on Ra_p, > 0
// config.local.loss must be "ce" (Ratio Loss is its own loss); config.data.auxiliary_per_class
// must be set (the authors use 63), so that RunContext::auxiliary holds every class. Heterogeneous
// model groups (config.model.groups) are refused, as by FedAvg.
//
// Metrics: each round's training metrics (finish()) are FedAvg's plus
//   "ratioloss": {"alpha": α_r used by this round's clients, "ratio": Ra of this round's probe
//   (after the cap), "next_alpha": α_{r+1}, "assigned": |pos_p| per class, "probe_seconds"}.
//
// Cost: the server trains K copies of the model per round on auxiliary_per_class examples each
// (K · epochs · ceil(auxiliary_per_class / batch_size) SGD steps, on RunContext::device), keeps K
// float32 K×d classifier weights, and sends one extra copy of the model per round (the task
// bundle with α).
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
// Free functions are reentrant.
#ifndef FEDTAIL_STRATEGIES_RATIOLOSS_RATIOLOSS_H_
#define FEDTAIL_STRATEGIES_RATIOLOSS_RATIOLOSS_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"
#include "common/learning/train_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The task bundle's class weights α: float32 [K].
inline constexpr char kRatioLossAlphaTensor[] = "ratioloss.alpha";
// Ra_p when its denominator is 0 (the code's value), before the cap.
inline constexpr double kRatioLossUndefinedRatio = 10.0;

struct RatioLossOptions {
  RoundOptions round;
  // α_p = alpha + beta · Ra_p. > 0; default 1 (the code's).
  double alpha = 1.0;
  // >= 0; default 0.1 (the code's).
  double beta = 0.1;
  // An element is assigned to the class with the largest change only when every other class's
  // change is at most this fraction of it in absolute value. In (0, 1]; default 0.8 (the code's).
  double dominance = 0.8;
  // Cap on Ra_p. > 0 and finite; default 5000 (the code's).
  double max_ratio = 5000.0;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.beta: must be >= 0 (got -1)") or an unknown key.
Result<RatioLossOptions> parse_ratioloss_options(const nlohmann::json& config);

// What ratio_weights estimates; tensors on the CPU.
struct RatioWeights {
  torch::Tensor alpha;     // float32 [K]: options.alpha + options.beta · ratio
  torch::Tensor ratio;     // float64 [K]: Ra_p after the cap
  torch::Tensor assigned;  // int64 [K]: |pos_p|, the weight elements assigned to class p
};

// The class weights of the file comment from the classifier weight `before` (K×d, any floating
// dtype and device; W_G) and `after[p]` (the same weight after training on class p only; K of
// them, shaped as `before`). `options` must be valid (parse_ratioloss_options); only alpha, beta,
// dominance and max_ratio are read. The inputs are not modified. kInvalidArgument for K < 2, a
// count or shape mismatch, or a non-finite value; kInternal for a LibTorch failure.
Result<RatioWeights> ratio_weights(const torch::Tensor& before,
                                   const std::vector<torch::Tensor>& after,
                                   const RatioLossOptions& options);

// The Ratio Loss of logits N×K against int64 labels N with class weights `alpha` ([K], logits'
// dtype and device): mean_i alpha[y_i] · CE_i, with a graph to the logits. Throws c10::Error on a
// shape mismatch (train_local catches it).
torch::Tensor ratio_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                  const torch::Tensor& alpha);

// α of a task bundle for a model of `num_classes` classes, as a float32 [K] CPU tensor.
// kInvalidArgument naming kRatioLossAlphaTensor when it is missing, not float32 [num_classes], or
// holds a value that is not finite and > 0.
Result<torch::Tensor> task_alpha(const TensorBundle& bundle, int64_t num_classes);

class RatioLossServer final : public FedAvgServer {
 public:
  // Refused: it probes each client's update for class imbalance.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition("it probes each client's update for class imbalance");
  }
  explicit RatioLossServer(const RatioLossOptions& options);

  // Checks the run (below), then FedAvgServer::initialize; α = 1, seed = run.config->seed.
  // kFailedPrecondition when run.config is null; kInvalidArgument when config.local.loss is not
  // "ce" (require_cross_entropy), when run.auxiliary is null or empty (the message names
  // config.data.auxiliary_per_class), or when the auxiliary set has a label outside [0, K) or no
  // example of some class; errors of FedAvgServer::initialize. The server is unchanged on error.
  // Borrows run.auxiliary's examples (copied, per class), config.local and run.device.
  Status initialize(const RunContext& run, Rng& rng) override;

  // After load_state: borrows the auxiliary set, config.local and run.device again, with
  // initialize's checks and errors (the seed and α come from the saved state).
  // kFailedPrecondition before load_state.
  Status resume(const RunContext& run) override;

  // FedAvgServer::configure_fit, each task with the bundle G_r + α_r (file comment).
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // FedAvgServer's Aggregation, whose finish() first runs the auxiliary probe on the current
  // global model (an error there fails finish() and changes nothing), then FedAvg's finish, then
  // installs α_{r+1} and adds "ratioloss" to the metrics (file comment). The Aggregation borrows
  // this server, which must outlive it. kFailedPrecondition before initialize, or after
  // load_state without resume.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // The α the next configure_fit sends (float32 [K], CPU); undefined before initialize/load_state.
  const torch::Tensor& alpha() const { return alpha_; }
  uint64_t seed() const { return seed_; }
  const RatioLossOptions& options() const { return options_; }

 protected:
  // Adds α as "ratioloss/alpha" and metadata "ratioloss": {"seed"}.
  Status save_extra_state(TensorBundle* state) const override;
  // Reads them back (and the base's "model" metadata, to build the probe's model).
  // kInvalidArgument for missing or malformed "ratioloss" metadata, a tensor other than
  // "ratioloss/alpha", or an α missing, not float32 [K] (K: the global classifier's rows), or not
  // finite and > 0.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class RatioLossAggregation;

  // Checks `run` (initialize's checks) for a model of `num_classes` classes and returns the
  // auxiliary examples of each class; commits nothing.
  Result<std::vector<Dataset>> check_run(const RunContext& run, int64_t num_classes) const;
  // ratio_weights of K auxiliary trainings of the current global model (file comment).
  Result<RatioWeights> probe(int round);
  // The body of RatioLossAggregation::finish.
  Result<nlohmann::json> finish_round(int round, Aggregation& fedavg, const torch::Tensor& used,
                                      const std::vector<ClientFailure>& failures);

  // Constant after construction.
  const RatioLossOptions options_;

  // Set by initialize or load_state.
  ModelOptions model_options_;  // builds the probe's model
  uint64_t seed_ = 0;           // the run seed
  torch::Tensor alpha_;         // float32 [K], CPU: what the next configure_fit sends

  // Set by initialize or resume (borrowed from the run).
  LocalTrainOptions local_;             // config.local, the probe's training
  torch::Device device_ = torch::kCPU;  // run.device, where the probe trains
  std::vector<Dataset> aux_by_class_;   // K entries once set; empty before
  Model probe_model_{nullptr};          // built on first use, reloaded with G_r per class
};

// The Ratio Loss client (file comment). fit: α from the task bundle (task_alpha), G_r loaded into
// context.model from the bundle's other tensors (exactly the model's), train_local on
// ratio_cross_entropy (plain cross-entropy when α is all 1), and returns the model state with
// num_examples = the training set size and metrics {"loss": mean training loss, "steps"}.
// evaluate: FedAvgClient::evaluate (evaluation tasks carry the plain global model).
// Errors: kInvalidArgument for a context without model, config, training data or rng, a bad α,
// or a bundle whose other tensors do not fit the model (naming the tensor); those of train_local.
class RatioLossClient final : public FedAvgClient {
 public:
  RatioLossClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
};

// Factories for the registry: config.strategy is parsed with parse_ratioloss_options.
Result<std::unique_ptr<ServerStrategy>> make_ratioloss_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_ratioloss_client(const nlohmann::json& config);

// The registry entry "ratioloss".
StrategyEntry ratioloss_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_RATIOLOSS_RATIOLOSS_H_
