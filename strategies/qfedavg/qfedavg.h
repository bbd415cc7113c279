// q-FedAvg (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning", ICLR
// 2020): solves the q-FFL objective min_w Σ_k F_k(w)^(q+1) / (q+1), which weights a client more
// the higher its loss, so that the accuracy spreads less across clients (q = 0 is FedAvg's
// objective; larger q is fairer).
//
// Round r, with w the global model:
//   - Tasks (configure_fit): FedAvgServer's (clients sampled by RoundOptions, uniformly; the paper
//     samples with probability ∝ data size); every task's bundle is w, its expected_update w's
//     tensors plus kQFedAvgLossTensor.
//   - Client (QFedAvgClient): loads w, computes F_k = the loss of w on its whole training set
//     (before training; config.local.loss, CE by default, of the "classifier" head, in eval mode:
//     BatchNorm running statistics, no augmentation), trains w exactly as FedAvgClient does
//     (train_local with config.local) into w̄_k, and uploads w̄_k's whole module state plus F_k
//     as kQFedAvgLossTensor (float64 [1]: a tensor, covered by expected_update and the engine's
//     finiteness check; metrics are not trusted).
//   - Server (QfflSum, strategies/qfedavg/qffl_sum.h, with L = "lipschitz"):
//       Δ_k = (F_k + ε)^q · L (w − w̄_k)
//       h_k = q (F_k + ε)^(q−1) · ‖L (w − w̄_k)‖² + L (F_k + ε)^q          ε = 1e-10
//       w ← w − Σ_k Δ_k / Σ_k h_k
//     ‖·‖² over the trainable parameters (the model's named_parameters), the step applied to every
//     floating-point tensor, integer buffers averaged plainly (qffl_sum.h says why). Updates are
//     not weighted by example counts (the authors' code and Flower's). An update whose F_k is
//     missing, not float64 [1], not finite or < 0 is refused.
// q = 0 (any L) gives the unweighted mean of the clients' models.
//
// In fedtail, QFedAvgServer is a FedAvgServer built with the configured RoundOptions (as FedNova
// and FedDyn are). Its Aggregation wraps FedAvg's: add() takes F_k out of each update, clamps
// negative BatchNorm running variances of the model part (sanitize_batchnorm, as FedAvg's
// Aggregation does to what it folds; honest clients have none), checks the model and computes its
// q-FFL terms in a QfflSum, then hands a copy of the model part (with the update's client id,
// num_examples and metrics) to FedAvg's Aggregation, and folds the terms into the QfflSum only
// once FedAvg has accepted it (QfflSum::add's gate): an update enters both or neither, so FedAvg's
// refusals (a second update from a client, num_examples <= 0 or an example total beyond int64)
// leave the sums unchanged. FedAvg's Aggregation applies min_fit_clients and accept_failures and
// reports "updates", "examples" and "loss"; when the round updates the model it calls the
// server's next_global, which ignores the weighted mean it is given and returns QfflSum::finish's
// w' (negative running variances from rounding clamped to 0). The copy costs one memcpy of the
// model per update (the QfflSum needs the values after FedAvg has taken the update), and FedAvg's
// weighted mean, computed and discarded, one model sweep per update plus one at the end.
//
// Sources: the authors' code (github.com/litian96/fair_flearn, flearn/trainers/qffedavg.py and
// fedbase.py aggregate2): F_k on the client's own training data, the ε, L = 1 / learning_rate of
// the local solver, the norm over all (trainable) variables. Flower's QFedAvg
// (flwr/server/strategy/qfedavg.py, aggregate_qffl) has the same formulas but evaluates one loss
// on the server for every client and takes a separate qffl_learning_rate (L = 1 / 0.1 by
// default); we follow the authors on both. Default q = 0.2 is Flower's (the authors' main.py
// defaults to 0, FedAvg's objective, and their experiments tune q per data set, e.g. 5 on
// Vehicle).
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h; "robust" is refused: the
// rule is q-FFL's, not a mean):
//   "q"          0.2               >= 0
//   "lipschitz"  1 / config.local.lr  L, > 0 (the authors' choice: the inverse of the local step
//                                   size, so that L (w − w̄_k) estimates the summed gradient)
// The trainer is config.local, FedAvg's (the paper's q-FedAvg uses plain SGD: momentum 0 and
// weight_decay 0 in config.local match it).
//
// State: FedAvgServer's (the global model) plus metadata "qfedavg": {"lipschitz": L as resolved at
// initialize}; no client state.
//
// Metrics of a round (finish()): FedAvg's {"updated", "updates", "failures", "examples", "loss":
// example-weighted mean of the clients' training losses, and "reason" when the model is kept}
// plus "qfedavg": {"q", "lipschitz", "global_loss": {"mean", "min", "max"} of the accepted F_k
// (null without updates), "weight_sum": Σ (F_k + ε)^q, "h_sum": Σ h_k, "step": L · weight_sum /
// h_sum (0 without updates), the fraction of the way from w to the (F_k + ε)^q-weighted mean of
// the w̄_k that the round moves, "batchnorm_variances_clamped": values clamped to 0 in the
// accepted updates and in w'}.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_QFEDAVG_QFEDAVG_H_
#define FEDTAIL_STRATEGIES_QFEDAVG_QFEDAVG_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/qfedavg/qffl_sum.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// The upload's F_k: float64 [1].
inline constexpr char kQFedAvgLossTensor[] = "qfedavg.loss";

struct QFedAvgOptions {
  // Sampling, min_fit_clients, accept_failures, evaluation: FedAvgServer's (round_options()).
  // robust must stay off.
  RoundOptions round;
  // The fairness exponent q, >= 0. Default 0.2 (Flower's).
  double q = 0.2;
  // L, > 0; 0 (the default) = 1 / config.local.lr, resolved by QFedAvgServer::initialize.
  double lipschitz = 0;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.q: must be >= 0 (got -1)", "config.strategy.lipschitz: must be > 0 (got 0)"),
// robust aggregation, or an unknown key.
Result<QFedAvgOptions> parse_qfedavg_options(const nlohmann::json& config);

// The q-FedAvg server (file comment): a FedAvgServer with the configured RoundOptions
// (round_options() returns options().round) for sampling, the round rules, initialisation,
// evaluation and save/load, whose next_global is the q-FFL step.
class QFedAvgServer final : public FedAvgServer {
 public:
  // Refused: its updates are reweighted by each client's loss (q-FFL), not averaged.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition(
        "its updates are reweighted by each client's loss (q-FFL), not averaged");
  }
  explicit QFedAvgServer(const QFedAvgOptions& options);

  // FedAvgServer::initialize, then L = options.lipschitz, or 1 / run.config->local.lr when 0,
  // and the norm tensors = the trainable parameters of the model run.config describes.
  // Errors: kFailedPrecondition when run.config is null; those of run_model_options, make_model
  // and FedAvgServer::initialize. The server is unchanged on error.
  Status initialize(const RunContext& run, Rng& rng) override;

  // FedAvgServer::configure_fit, then every task's expected_update is the global tensors plus
  // kQFedAvgLossTensor (float64 [1]), one shared bundle per global model. Errors: those of
  // FedAvgServer::configure_fit (kFailedPrecondition before initialize/load_state or when fewer
  // than min_fit_clients are available).
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // FedAvgServer's Aggregation behind one that takes F_k out of each update and keeps the round's
  // QfflSum over the current global model (file comment). Its add() refuses, the sums and
  // FedAvg's unchanged: an update without a valid kQFedAvgLossTensor, other tensors than the
  // global ones, terms that overflow (QfflSum::add), and whatever FedAvg's Aggregation refuses (a
  // second update from a client, num_examples <= 0, an example total beyond int64). Its finish()
  // is FedAvg's (min_fit_clients, accept_failures: "updated": false and a "reason", the model
  // kept; else w' installed with metadata round = `round`) plus the "qfedavg" metrics of the
  // file comment. The Aggregation borrows this server, which must outlive it.
  // kFailedPrecondition before initialize/load_state.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // The parsed options; options().round is what the base was built with (round_options()).
  const QFedAvgOptions& options() const { return options_; }
  // L as resolved; 0 before initialize/load_state.
  double lipschitz() const { return lipschitz_; }
  // The tensors of ‖w − w̄_k‖² (the trainable parameters' names); empty before
  // initialize/load_state.
  const std::vector<std::string>& norm_names() const { return norm_names_; }

 protected:
  // w' = QfflSum::finish() of the round being finished (`average`, FedAvg's weighted mean, is not
  // used), with negative BatchNorm running variances clamped to 0. Its errors (kInvalidArgument
  // when H or a value of w' is not finite) fail finish() and keep the old model. kInternal
  // outside a q-FedAvg Aggregation's finish().
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds metadata "qfedavg": {"lipschitz"}.
  Status save_extra_state(TensorBundle* state) const override;
  // Reads L back and rebuilds the norm tensors from the state's "model" metadata.
  // kInvalidArgument for any extra tensor, missing or malformed "qfedavg" metadata, L not finite
  // and > 0, or a trainable parameter that is not a floating-point tensor of `global`.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class QFedAvgAggregation;

  // Constant after construction.
  const QFedAvgOptions options_;

  // Set by initialize or load_state.
  double lipschitz_ = 0;
  std::vector<std::string> norm_names_;

  // The expected_update of the tasks of the global model expected_for_ points to (built once per
  // global model; weak, so that an old global model is not kept alive).
  std::weak_ptr<const TensorBundle> expected_for_;
  std::shared_ptr<const TensorBundle> expected_;

  // Set by QFedAvgAggregation::finish around FedAvg's finish, for next_global, then reset: the
  // round's sums (borrowed from the Aggregation; null outside its finish) and the running
  // variances next_global clamped.
  const QfflSum* round_sum_ = nullptr;
  int64_t round_clamped_ = 0;
};

// The q-FedAvg client (file comment). fit: loads the task's bundle into context.model (strictly),
// F_k = qfedavg_global_loss(context), trains as FedAvgClient::train, and returns the module
// state plus kQFedAvgLossTensor = {F_k}, num_examples = the training set size, metrics
// {"loss": mean training loss, "steps", "global_loss": F_k}. The model part is FedAvgClient's
// update bit for bit (F_k draws nothing from the Rng). evaluate: FedAvgClient's.
// Errors: kInvalidArgument for a context without model, config, training data or rng, or a bundle
// that does not fit the model; kInternal when F_k is not finite; those of qfedavg_global_loss and
// train_local.
class QFedAvgClient final : public FedAvgClient {
 public:
  QFedAvgClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
};

// F_k: config.local.loss (client_loss, strategies/fedprox/fedprox.h) of context.model's
// "classifier" logits over all of context.train at once, computed in eval mode under NoGradGuard
// on the evaluation path of config.local.augment (normalisation only), in batches of
// config.eval.batch_size (predict_logits). The model's mode is restored. Errors: kInvalidArgument
// for a context without model, config or training data; those of predict_logits and
// ClassificationLoss::create; kInternal for a LibTorch failure.
Result<double> qfedavg_global_loss(ClientContext& context);

// Factories for the registry: config.strategy is parsed with parse_qfedavg_options.
Result<std::unique_ptr<ServerStrategy>> make_qfedavg_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_qfedavg_client(const nlohmann::json& config);

// The registry entry "qfedavg".
StrategyEntry qfedavg_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_QFEDAVG_QFEDAVG_H_
