// FedDyn (Acar, Zhao, Matas, Mattina, Whatmough & Saligrama, "Federated Learning Based on Dynamic
// Regularization", ICLR 2021): each client's objective is corrected by a linear term built from
// its own past updates, so that the clients' local optima agree with the global one at a fixed
// point; the server keeps the mean of those corrections (h) and shifts the average by it.
//
// Round t, with θ^{t−1} the global model the round's clients start from (the task bundle), P the
// clients whose updates were accepted and m the number of clients available to configure_fit
// (the federation as the coordinator sees it: the authors' n_clnt, every client of the run):
//   - Client k (FedDynClient), over its trainable parameters θ (BatchNorm weight and bias
//     included; running statistics and counters are buffers, left to training as FedAvg does):
//       minimise  L_k(θ) − <g_k, θ> + (α_k/2) · ‖θ − θ^{t−1}‖²
//     with train_local (config.local: epochs, batch_size, lr, momentum, weight_decay, augment,
//     max_steps; L_k is config.local.loss, cross-entropy by default; g_k and θ^{t−1} detached),
//     then  g_k ← g_k − α_k · (θ_k^t − θ^{t−1})  (so that g_k = ∇L_k(θ_k^t) at the local optimum).
//     g_k starts at 0 and lives in the client's ClientState::tensors as kFedDynClientPrefix +
//     <parameter name> (the parameter's dtype and shape), written only when fit succeeds. The
//     upload is the whole model state, as FedAvg's.
//   - Server (FedDynServer, a FedAvgServer):
//       h   ← h − α · (1/m) · Σ_{k∈P} (θ_k^t − θ^{t−1})
//       θ^t = (1/|P|) · Σ_{k∈P} θ_k^t − (1/α) · h
//     for every floating-point tensor that is not a BatchNorm running statistic
//     (feddyn_regularizes); BatchNorm running statistics and integer tensors take the plain
//     uniform mean (1/|P|) Σ θ_k^t, without h. h (float64, one tensor per such global tensor,
//     zero at initialize) is the server's state beside the global model. Σ_{k∈P}(θ_k^t − θ^{t−1})
//     is computed as |P| · (mean − θ^{t−1}), in float64.
//
// The uniform mean: the paper and both reference implementations average the participants'
// models without weights (np.mean / 1/num_join_clients), and the h recursion is derived for that
// mean. FedAvgServer's Aggregation gives the example-weighted mean, so FedDyn's Aggregation wraps
// it and hands it every update with num_examples = 1: its WeightedAverage (or robust rule) then
// computes the uniform mean, every other check of FedAvg (names, shapes, a second update from a
// client, robust clipping) unchanged. The round's metrics put back the true example count and the
// example-weighted mean of the clients' "loss". With a robust rule (config.strategy.robust), its
// aggregate takes the place of the mean in both formulas.
//
// α per client (config.strategy.alpha_scaling):
//   "examples" (default): α_k = α · n̄ / n_k, n_k the client's training examples and n̄ the mean
//     over the available clients (ClientInfo::num_examples; a client that declared none gets α).
//     This is the authors' code (github.com/alpemreacar/FedDyn, utils_methods.py train_FedDyn:
//     alpha_coef / weight_list[clnt], weight_list = n_k / Σn · n_clnt). Its fixed point solves the
//     example-weighted objective Σ_k n_k L_k (Σ_k g_k/α_k = 0 there), the one FedAvg's weighted
//     mean targets in fedtail, hence the default.
//   "uniform": α_k = α for every client, the paper's Algorithm 1 (and PFLlib's clientdyn.py); its
//     fixed point solves the unweighted mean of the clients' objectives.
// The server sends α_k as the task config {"alpha": α_k}; the server's own recursion always uses
// α (in the code the server never sees α at all: it keeps Σ(θ_k − θ) per client, which is
// −h·m/α summed, and its θ^t is the same as ours).
//
// Other details of the authors' code: the linear term there is α_k<θ, −θ^{t−1} + Σ(θ_k − θ)> with
// SGD weight_decay α_k + weight_decay, the same gradient as ours (the weight decay is
// config.local.weight_decay, applied by train_local; the authors use 1e-3 on CIFAR-10); gradients
// are clipped to norm 10 there, not here (train_local does not clip); alpha_coef = 1e-2 in both
// example scripts (example_cifar_10.py, example_synthetic.py), hence the default (PFLlib's
// generic --alpha defaults to 1.0). PFLlib's client (clientdyn.py) uses α/2 · ‖θ − θ^{t−1}‖, the
// norm not squared, which we do not copy; its server (serverdyn.py) is the paper's, uniform α.
//
// Failures: a client updates g_k as soon as its fit succeeds; if its update is then lost or
// refused, or the round keeps the old model (too few updates, accept_failures false), the server's
// h does not include it (h changes only when the round updates the model). This is inherent in
// FedDyn with unreliable clients (the paper assumes every trained update arrives).
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "alpha"          0.01        α, > 0
//   "alpha_scaling"  "examples"  "examples" or "uniform" (above)
//
// Metrics: FedAvg's (with "examples" and "loss" as above) plus
//   "feddyn": {"alpha", "clients": m, "participants": |P|, "h_norm": ‖h‖₂ after the round}.
// The client reports {"loss": mean of L_k over its batches, "objective": mean of the whole
// regularised loss, "steps", "alpha": α_k}.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDDYN_FEDDYN_H_
#define FEDTAIL_STRATEGIES_FEDDYN_FEDDYN_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// Client state: g_k of parameter <name> is ClientState::tensors[kFedDynClientPrefix + name].
inline constexpr char kFedDynClientPrefix[] = "feddyn/grad/";
// Server state: h of global tensor <name> is the saved state's kFedDynStatePrefix + name
// (float64, the tensor's shape).
inline constexpr char kFedDynStatePrefix[] = "feddyn/h/";
// The task config key that carries α_k.
inline constexpr char kFedDynAlphaKey[] = "alpha";

enum class FedDynAlphaScaling {
  kExamples,  // α_k = α · n̄ / n_k (the authors' code)
  kUniform,   // α_k = α (the paper)
};

struct FedDynOptions {
  RoundOptions round;
  // α, the weight of the dynamic regulariser and the server's 1/α · h. > 0; default 0.01 (the
  // authors' example configs).
  double alpha = 0.01;
  // How α_k is derived from α (file comment). Default kExamples.
  FedDynAlphaScaling alpha_scaling = FedDynAlphaScaling::kExamples;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.alpha: must be > 0 (got 0)") or an unknown key.
Result<FedDynOptions> parse_feddyn_options(const nlohmann::json& config);

// True for the global tensors that take FedDyn's rule (and have an h): floating-point tensors
// other than BatchNorm running statistics (names ending in ".running_mean" / ".running_var").
bool feddyn_regularizes(const NamedTensor& tensor);

// α_k of a client with `num_examples` examples among `available` (file comment): α for kUniform,
// for a client with num_examples <= 0, or when no available client declared any example.
double feddyn_client_alpha(const FedDynOptions& options, int64_t num_examples,
                           const std::vector<ClientInfo>& available);

class FedDynServer final : public FedAvgServer {
 public:
  // Refused: its state update uses the sum over all clients, not the weighted mean.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition(
        "its state update uses the sum over all clients, not the weighted mean");
  }
  explicit FedDynServer(const FedDynOptions& options);

  // FedAvgServer::initialize, then h = 0 for every tensor feddyn_regularizes.
  Status initialize(const RunContext& run, Rng& rng) override;

  // FedAvgServer::configure_fit; each task's config is {"alpha": α_k}. Remembers m =
  // available.size() for the round's aggregation.
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // FedAvgServer's Aggregation fed with num_examples = 1 (the uniform mean), whose finish()
  // applies the file comment's rule. The Aggregation borrows this server, which must outlive it.
  // kFailedPrecondition before initialize/load_state, or when configure_fit has not succeeded
  // for `round` (m unknown).
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // h, float64 tensors named kFedDynStatePrefix + <global name>; empty before
  // initialize/load_state.
  const TensorBundle& h() const { return h_; }
  const FedDynOptions& options() const { return options_; }

 protected:
  // θ^t from the uniform mean, updating h (file comment). kInternal when called outside a
  // FedDyn Aggregation's finish().
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds h (its tensors, under their kFedDynStatePrefix names).
  Status save_extra_state(TensorBundle* state) const override;
  // Reads h back: kInvalidArgument for a tensor other than the h of a tensor of `global` that
  // feddyn_regularizes, an h that is not float64 of that tensor's shape, or a missing one.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class FedDynAggregation;

  // Constant after construction.
  const FedDynOptions options_;

  TensorBundle h_;  // set by initialize or load_state
  // The last successful configure_fit: its round and m.
  int configured_round_ = 0;
  int64_t configured_clients_ = 0;
  // Set by FedDynAggregation::finish for next_global, then reset: m and |P| of the round.
  int64_t round_clients_ = 0;
  int64_t round_participants_ = 0;
};

// The FedDyn client (file comment). fit: loads the task bundle into context.model (strictly),
// reads α_k from the task config's "alpha" (the client's own `alpha` when absent) and g_k from
// context.state (0 when the state holds none), trains, updates g_k in context.state and returns
// the whole model state with num_examples = the training set size. evaluate: FedAvgClient's.
// Errors: kInvalidArgument for a context without model, config, training data, rng or state, a
// task "alpha" that is not a finite number > 0, a state holding only some of the g_k or one whose
// dtype or shape differs from its parameter's (naming it; the state is then unchanged), or a
// bundle that does not fit the model; those of train_local and ClassificationLoss::create.
class FedDynClient final : public FedAvgClient {
 public:
  explicit FedDynClient(double alpha) : alpha_(alpha) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;

 private:
  const double alpha_;  // constant after construction
};

// Factories for the registry: config.strategy is parsed with parse_feddyn_options.
Result<std::unique_ptr<ServerStrategy>> make_feddyn_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_feddyn_client(const nlohmann::json& config);

// The registry entry "feddyn".
StrategyEntry feddyn_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDDYN_FEDDYN_H_
