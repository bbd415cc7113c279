// SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich & Suresh, "SCAFFOLD: Stochastic Controlled
// Averaging for Federated Learning", ICML 2020), Algorithm 1 with the option II control-variate
// update. Control variates correct the client drift of FedAvg on heterogeneous data: the server
// holds the model x and a control variate c, each client i its own c_i, and clients step along
// g_i(y) + c − c_i instead of their own gradient g_i(y).
//
// Round r (from 1), N = the number of clients available to configure_fit that round:
//   - Tasks (configure_fit): FedAvg's sampling (RoundOptions). Every task shares one bundle: x's
//     tensors (the whole module state) plus, for every trainable parameter p, c_p as
//     "scaffold.c/<p>" (kScaffoldControlPrefix), same dtype and shape. expected_update is a bundle
//     with exactly the upload's tensors: x's tensors plus "scaffold.dc/<p>" for every p (built once
//     per initialize / load_state; its values are zeros and are not read).
//   - Client (ScaffoldClient): c_i from ClientState::tensors ("scaffold.ci/<p>",
//     kScaffoldClientPrefix; absent on a client's first task: 0). y_i = x; K steps of train_local
//     (config.local: epochs, batch_size, lr η_l, momentum, weight_decay, augment, max_steps) on
//       base(y; batch) + Σ_p <(c − c_i)_p, y_p> − (the same sum, detached)
//     (control_corrected_loss), with base = config.local.loss (cross-entropy by default) and
//     (c − c_i) detached: the gradient is g_i(y) + c − c_i, the value is the base loss alone (so
//     the "loss" metric stays comparable with FedAvg's). When c − c_i is 0 everywhere (round 1:
//     c = c_i = 0) the client trains exactly as FedAvgClient does, so round 1's model update is
//     FedAvg's bit for bit. Then option II:
//       c_i+ = c_i − c + (x − y_i) / (K_eff · η_l)
//     computed in float64 on the CPU and rounded to the parameter's dtype; K = TrainStats::steps
//     (steps taken), K_eff = effective_steps(K, momentum) (= K without momentum; see below). The
//     upload is y_i's module state plus Δc_i = c_i+ − c_i as "scaffold.dc/<p>" (float64 difference
//     of the rounded values, rounded); c_i+ replaces c_i in ClientState::tensors once everything
//     else has succeeded (other state tensors are left alone). num_examples = the training set
//     size.
//   - Server (the Aggregation): each update is checked against expected_update (refusals name the
//     tensor: a missing, extra or misshapen "scaffold.dc/..." tensor included), split by prefix
//     into the model (FedAvgServer's Aggregation: WeightedAverage, robust options, second-update
//     refusal) and Δc_i (summed in float64). finish():
//       x ← x + η_g · (Σ_i n_i y_i / Σ_i n_i − x)    for trainable parameters (η_g = server_lr);
//                                                    other state tensors (BatchNorm statistics
//                                                    and counters) take the weighted mean itself;
//                                                    η_g = 1 is exactly FedAvg's model
//       c ← c + (|S| / N) · mean_i Δc_i = c + (1/N) Σ_i Δc_i   (float64, rounded to the dtype)
//     with |S| the number of accepted updates, and only when FedAvg's rule updates the model (a
//     round that keeps the old model keeps c too).
//
// Which source each detail follows:
//   - The corrected step g + c − c_i, c_i+ by option II, Δy and Δc uploads, c += (1/N) Σ Δc_i:
//     the paper (Algorithm 1, eq. option II) and NIID-Bench (github.com/Xtra-Computing/NIID-Bench,
//     experiments.py: train_net_scaffold, local_train_net_scaffold: total_delta /= n_parties).
//     PFLlib (github.com/TsingZ0/PFLlib, system/flcore/servers/serverscaffold.py) adds
//     Σ_i Δc_i · |S|/N, |S| times the paper's step; we follow the paper.
//   - K is every SGD step of the round (NIID-Bench's cnt; the paper's K). PFLlib's client
//     (clients/clientscaffold.py) divides by the batches of one epoch (len(trainloader)), which
//     differs for epochs > 1.
//   - x's update: the example-weighted mean of the uploads (FedAvgServer's WeightedAverage), as
//     both PFLlib (uploaded_weights = train_samples / total) and NIID-Bench (fed_avg_freqs) do;
//     the paper averages uniformly (1/|S|). Weighted keeps η_g = 1 identical to fedtail's FedAvg,
//     so a comparison with "fedavg" isolates the control variates. η_g as PFLlib's
//     server_learning_rate (the paper's η_g; NIID-Bench has none: 1).
//   - Δc is averaged uniformly (paper, both codes): c estimates (1/N) Σ_i c_i, which a weighting
//     would break.
//   - Control variates exist for the trainable parameters only (paper; PFLlib's parameters());
//     NIID-Bench keeps them for every state_dict entry, BatchNorm buffers included, which are not
//     trained by gradients. BatchNorm buffers are averaged as FedAvg does (NIID-Bench's whole
//     state_dict average; PFLlib leaves them out).
//   - c and every c_i start at 0 (PFLlib; NIID-Bench starts c_i = c from one random model).
//
// Momentum and weight decay (config.local): the correction is part of the gradient that the SGD
// optimiser receives (as PFLlib's SCAFFOLDOptimizer adds c − c_i to p.grad before its step;
// NIID-Bench instead subtracts η_l(c − c_i) from the weights after a momentum step). So weight
// decay adds λ·y to g (c_i then estimates the gradient of the regularised local objective), and
// momentum μ filters g + c − c_i like the plain gradient. With the momentum buffer starting at 0
// each round (train_local), K steps move the weights by η_l · Σ_j a_j (g_j + c − c_i), with
// a_j = (1 − μ^(K−j+1)) / (1 − μ) and Σ_j a_j = K_eff = Σ_{m=1..K} (1 − μ^m) / (1 − μ) (FedNova's
// a_i; NIID-Bench's fednova uses the same). Dividing x − y by K·η_l (the paper's formula, which
// assumes plain SGD) would then give c_i+ = F·ḡ_i + (F − 1)(c − c_i) (ḡ_i the a_j-weighted mean
// gradient) with F = K_eff / K (up to 1/(1 − μ) = 10 at μ = 0.9): with every client selected,
// c − c_i then feeds back on itself with gain −(F − 1) from round to round, which (for gradients
// that change slowly) oscillates with growing amplitude once F > 2 (μ = 0.9 and K = 10 give
// F ≈ 4.1). Dividing by K_eff·η_l gives c_i+ = ḡ_i (the a_j-weighted mean gradient),
// as plain SGD does with K; so "effective_steps" (default true) uses K_eff, which equals K when
// μ = 0, i.e. in the paper's setting both are the paper's formula. false: K whatever μ.
// (Run SCAFFOLD with config.local.momentum 0 to reproduce the paper's optimiser.)
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "server_lr"        1.0   η_g, > 0 and finite
//   "effective_steps"  true  option II divides by K_eff·η_l (true) or K·η_l (false); same when
//                            config.local.momentum is 0
// Heterogeneous model groups (config.model.groups) are refused, as by FedAvg. Robust options
// apply to the model part only: Δc is averaged plainly (a hostile client can move c; clipping and
// the robust rules do not bound Δc).
//
// State: the server's x (FedAvgServer's) and c (tensors "scaffold.c/<p>" in the saved state;
// save_state/load_state restore it bit for bit; no resume() needed). N lives from configure_fit
// to the end of that round's Aggregation only. Each client's c_i is in its ClientState, which the
// client runtime persists. c_i is replaced when the client's fit succeeds, whether or not its
// upload is then accepted: a lost or refused upload leaves c ≠ (1/N) Σ_i c_i by that Δc_i (the
// paper assumes every selected client answers).
//
// Metrics: the client's fit returns {"loss" (base loss), "steps" (K), "effective_steps" (K_eff
// or K, the divisor used), "correction_norm" (‖c − c_i‖₂ over all parameters)}; the round's
// training metrics (finish()) are FedAvg's plus "scaffold": {"available_clients" (N),
// "control_updates" (|S|), "control_norm" (‖c‖₂ after the round)}.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
// Free functions are reentrant.
#ifndef FEDTAIL_STRATEGIES_SCAFFOLD_SCAFFOLD_H_
#define FEDTAIL_STRATEGIES_SCAFFOLD_SCAFFOLD_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/learning/classification_loss.h"
#include "common/learning/models.h"
#include "common/learning/train_loop.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// c_p in task bundles and in the server's saved state: "scaffold.c/<parameter name>".
inline constexpr char kScaffoldControlPrefix[] = "scaffold.c/";
// Δc_i,p in a client's upload: "scaffold.dc/<parameter name>".
inline constexpr char kScaffoldDeltaPrefix[] = "scaffold.dc/";
// c_i,p in ClientState::tensors: "scaffold.ci/<parameter name>".
inline constexpr char kScaffoldClientPrefix[] = "scaffold.ci/";

struct ScaffoldOptions {
  RoundOptions round;
  // η_g: x ← x + server_lr · (mean − x) on the trainable parameters. > 0 and finite; default 1.
  double server_lr = 1.0;
  // Option II divides x − y by K_eff·η_l (true) or K·η_l (false). Default true (file comment).
  bool effective_steps = true;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.server_lr: must be > 0 (got 0.0)") or an unknown key.
Result<ScaffoldOptions> parse_scaffold_options(const nlohmann::json& config);

// K_eff = Σ_{m=1..steps} (1 − momentum^m) / (1 − momentum): how many plain-SGD steps of the same
// learning rate move the weights as far as `steps` steps of momentum-SGD (PyTorch's, no dampening,
// buffer starting at 0) under a constant gradient. `steps` for momentum 0; 0 for steps <= 0.
// Precondition: 0 <= momentum < 1.
double effective_steps(int64_t steps, double momentum);

// The loss base(model(x), y) + Σ_i <corrections[i], params[i]> − (the same sum, detached):
// its value is the base loss, its gradient w.r.t. params[i] is base's plus corrections[i]
// (detached, on the training device, shaped as params[i]). An empty `params` gives base alone.
LossFn control_corrected_loss(Model model, ClassificationLoss base,
                              std::vector<torch::Tensor> params,
                              std::vector<torch::Tensor> corrections);

class ScaffoldServer final : public FedAvgServer {
 public:
  // Refused: its control variates are averaged over all clients, not weighted by examples.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition(
        "its control variates are averaged over all clients, not weighted by examples");
  }
  explicit ScaffoldServer(const ScaffoldOptions& options);

  // FedAvgServer::initialize (the same draws from `rng`: the same x as "fedavg" for a seed), then
  // c = 0 for every trainable parameter of the model (a model built from the run's options lists
  // them). Errors: those of run_model_options, make_model and FedAvgServer::initialize.
  Status initialize(const RunContext& run, Rng& rng) override;

  // FedAvgServer::configure_fit's clients, every task with the bundle x + c and the
  // expected_update of the file comment; remembers N = available.size() for `round`.
  // kFailedPrecondition before initialize/load_state and as FedAvgServer::configure_fit.
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // An Aggregation as in the file comment; finish() returns FedAvg's metrics plus "scaffold". The
  // Aggregation borrows this server, which must outlive it. kFailedPrecondition before
  // initialize/load_state, or when configure_fit has not (successfully) configured `round`.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // c: one tensor "scaffold.c/<p>" per trainable parameter p, in the model's parameter order.
  // Empty before initialize/load_state.
  const TensorBundle& control() const { return control_; }
  // The trainable parameters' names, in the model's order. Empty before initialize/load_state.
  const std::vector<std::string>& parameter_names() const { return parameters_; }
  const ScaffoldOptions& options() const { return options_; }

 protected:
  // x + server_lr · (average − x) on the trainable parameters, the average elsewhere; `average`
  // itself when server_lr is 1.
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds c's tensors (names "scaffold.c/<p>").
  Status save_extra_state(TensorBundle* state) const override;
  // Reads c back: `extra` must hold exactly one "scaffold.c/<p>" per trainable parameter p of the
  // model the state's metadata describes, with p's dtype and shape in `global`. kInvalidArgument
  // naming the tensor otherwise.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class ScaffoldAggregation;

  // What initialize / load_extra_state install together.
  struct Controls {
    std::vector<std::string> parameters;
    TensorBundle control;
    std::shared_ptr<const TensorBundle> expected_update;
  };
  // Controls for `global` (the model of `model_options`), c taken from `saved` (the state's extra
  // tensors) or 0 when null. `where` prefixes errors.
  static Result<Controls> make_controls(const ModelOptions& model_options,
                                        const TensorBundle& global, const TensorBundle* saved,
                                        const std::string& where);
  void install(Controls controls);

  // Constant after construction.
  const ScaffoldOptions options_;

  // Set by initialize or load_state; control_ also by each round that updates the model.
  std::vector<std::string> parameters_;
  TensorBundle control_;
  std::shared_ptr<const TensorBundle> expected_update_;

  // Set by configure_fit: the round it configured and N.
  int configured_round_ = -1;
  int64_t available_clients_ = 0;
};

// The SCAFFOLD client (file comment). fit: c from the task bundle, c_i from context.state, local
// training with control_corrected_loss, option II, upload y_i + Δc_i, c_i+ stored. evaluate:
// FedAvgClient::evaluate (evaluation tasks carry the plain global model).
// Errors: kInvalidArgument for a context without model, config, training data, rng or state; a
// bundle that does not hold exactly the model's tensors plus one "scaffold.c/<p>" per trainable
// parameter p with p's dtype and shape (naming the tensor); a ClientState whose "scaffold.ci/"
// tensors are not exactly one per trainable parameter with its dtype and shape (naming the
// tensor); those of client_loss and train_local; kInternal for a LibTorch failure. On error
// context.state is unchanged.
class ScaffoldClient final : public FedAvgClient {
 public:
  explicit ScaffoldClient(const ScaffoldOptions& options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;

 private:
  const ScaffoldOptions options_;  // constant after construction
};

// Factories for the registry: config.strategy is parsed with parse_scaffold_options.
Result<std::unique_ptr<ServerStrategy>> make_scaffold_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_scaffold_client(const nlohmann::json& config);

// The registry entry "scaffold".
StrategyEntry scaffold_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_SCAFFOLD_SCAFFOLD_H_
