// FedNova (Wang, Liu, Liang, Joshi & Poor, "Tackling the Objective Inconsistency Problem in
// Heterogeneous Federated Optimization", NeurIPS 2020): clients that take different numbers of
// local steps pull FedAvg's average toward the objectives of the clients that step most. FedNova
// divides each client's change by its own "normalising" step count a_i and lets the server take
// τ_eff such normalised steps.
//
// Round t, with x the global model the round's clients start from and, for client i, n_i its
// training examples, τ_i the local SGD steps it took, ρ = config.local.momentum and y_i its model
// after training:
//   a_i  = τ_i                                        (ρ = 0)
//   a_i  = [τ_i − ρ(1 − ρ^{τ_i})/(1 − ρ)] / (1 − ρ)   (ρ > 0; = Σ_{t=1}^{τ_i} (1 − ρ^t)/(1 − ρ))
//   d_i  = (x − y_i) / a_i                            (the normalised update)
//   p_i  = n_i / Σ_j n_j,  τ_eff = Σ_i p_i a_i        (over the round's accepted updates)
//   x   ← x − τ_eff · Σ_i p_i d_i                     (server learning rate 1)
// With the server momentum gmf > 0 (the code's "global momentum factor"):
//   v ← gmf · v + τ_eff Σ_i p_i d_i;  x ← x − v       (v starts at 0)
// The rule applies to the floating-point tensors that are not BatchNorm running statistics
// (fednova_normalizes: the trainable parameters); BatchNorm running statistics and integer tensors
// take the plain example-weighted mean of the clients' values (FedAvg's).
//
// In fedtail (FedNovaClient / FedNovaServer):
//   - The client trains exactly as FedAvg's (FedAvgClient::train: train_local with config.local,
//     its loss included) and uploads the "normalised model" z_i = x − d_i (computed in float64 per
//     element, stored in the tensor's dtype) in place of each normalised tensor, its trained
//     values of the others, plus a_i as kFedNovaATensor (float64 [1]). τ_i is the number of SGD
//     steps train_local actually took (TrainStats::steps), a_i is computed by the code's
//     recurrence (counter ← ρ·counter + 1; a += counter).
//   - The server (a FedAvgServer) sets each fit task's expected_update to the global tensors plus
//     kFedNovaATensor. Its Aggregation takes a_i out of each update (refusing one that is missing,
//     not float64 [1], not finite, <= 0, or larger than config.local allows: the a of
//     fednova_max_steps steps) and hands z_i to FedAvg's Aggregation, whose example-weighted mean
//     is z̄ = x − Σ p_i d_i; next_global is x − τ_eff · (x − z̄) (or the momentum form), in
//     float64. τ_eff = Σ n_i a_i / Σ n_i over the updates FedAvg accepted, summed in client-id
//     order (so the arrival order does not change it). With a robust rule (config.strategy.robust)
//     its aggregate of the z_i takes the place of z̄; τ_eff stays the weighted mean of all
//     accepted a_i.
//   Precision: z_i rounds d_i to the precision of x's dtype (about half an ulp of x per element),
//   and the server multiplies that by τ_eff; the result is within τ_eff ulps of x of the exact
//   rule, the same order as the rounding that τ local float32 SGD steps already make.
//
// Capped steps (config.local.max_steps): a client stopped by the cap reports the τ_i it took, so
// its a_i is smaller and its d_i is its mean step per normalised step: it is not under-weighted
// (FedAvg would weigh its shorter trip less), and τ_eff is the weighted mean of what the clients
// did. The bound on a_i uses min(max_steps, epochs · ceil(n_i / batch_size)).
//
// As the authors' code (github.com/JYWa/FedNova, distoptim/FedNova.py FedNova.step/average, and
// train_LocalSGD.py): cum_grad = Σ lr · d_p over the steps (momentum and weight decay included:
// x − y_i), a_i by the recurrence above (weight decay not in a_i), τ_eff = Σ ratio_i a_i,
// old_init −= τ_eff Σ ratio_i cum_grad_i / a_i (or lr · the global momentum buffer, which with a
// constant lr is v above), the local momentum buffer restarts at 0 every round (train_local makes
// a fresh optimiser). Differences: the code averages over every worker (all participate each
// round, ratio = n_i / n of the whole data set); fedtail samples clients, so p_i is over the
// round's accepted updates, as the paper's partial-participation variant. The code does not
// average BatchNorm buffers (its models' buffers stay local); we take their weighted mean, as
// FedAvg. The code's FedProx-inside-FedNova option (mu, which changes a_i) is not offered; nor is
// Nesterov momentum (train_local has none).
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "gmf"  0   server momentum in [0, 1) (the code's --gmf, default 0)
//
// State: the global model and, once gmf > 0 has stepped, v as float64 tensors named
// kFedNovaVelocityPrefix + <global name>.
// Metrics: FedAvg's plus "fednova": {"tau_eff", "a_min", "a_max", "gmf"} (tau_eff, a_min and a_max
// null without an accepted update). The client reports {"loss", "steps", "a"}.
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
// Free functions are reentrant.
#ifndef FEDTAIL_STRATEGIES_FEDNOVA_FEDNOVA_H_
#define FEDTAIL_STRATEGIES_FEDNOVA_FEDNOVA_H_

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "common/base/status.h"
#include "common/learning/train_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// A client update's a_i: float64 [1].
inline constexpr char kFedNovaATensor[] = "fednova.a";
// The server momentum v of global tensor <name> in the saved state (float64, its shape).
inline constexpr char kFedNovaVelocityPrefix[] = "fednova/velocity/";

struct FedNovaOptions {
  RoundOptions round;
  // Server (global) momentum factor gmf in [0, 1); 0 is plain FedNova. Default 0 (the code's).
  double gmf = 0.0;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.gmf: must be in [0, 1) (got 1)") or an unknown key.
Result<FedNovaOptions> parse_fednova_options(const nlohmann::json& config);

// a_i of `steps` local SGD steps with momentum `momentum` in [0, 1), by the code's recurrence
// (exactly `steps` for momentum 0). 0 for steps <= 0.
double fednova_normalizer(int64_t steps, double momentum);

// The most SGD steps train_local takes on `num_examples` examples with `local`:
// epochs · ceil(num_examples / batch_size), capped at max_steps when it is > 0 (saturating at
// INT64_MAX). 0 for num_examples <= 0.
int64_t fednova_max_steps(int64_t num_examples, const LocalTrainOptions& local);

// True for the tensors FedNova normalises: floating-point tensors other than BatchNorm running
// statistics (names ending in ".running_mean" / ".running_var").
bool fednova_normalizes(const NamedTensor& tensor);

class FedNovaServer final : public FedAvgServer {
 public:
  // Refused: it normalises each update by its client's local step count.
  Status supports_mean_aggregation() const override {
    return Status::FailedPrecondition("it normalises each update by its client's local step count");
  }
  explicit FedNovaServer(const FedNovaOptions& options);

  // FedAvgServer::initialize; borrows config.local (the bound on a_i). kFailedPrecondition when
  // run.config is null. Clears v.
  Status initialize(const RunContext& run, Rng& rng) override;
  // After load_state: borrows config.local again. kFailedPrecondition when run.config is null or
  // before load_state.
  Status resume(const RunContext& run) override;

  // FedAvgServer::configure_fit, each task's expected_update the global tensors plus
  // kFedNovaATensor (one bundle, made on first use and shared).
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;

  // FedAvgServer's Aggregation behind one that takes a_i out of each update (file comment). The
  // Aggregation borrows this server, which must outlive it. kFailedPrecondition before
  // initialize, or after load_state without resume.
  Result<std::unique_ptr<Aggregation>> begin_aggregation(int round) override;

  // v: float64 tensors named kFedNovaVelocityPrefix + <global name>; empty until gmf > 0 steps.
  const TensorBundle& velocity() const { return velocity_; }
  const FedNovaOptions& options() const { return options_; }

 protected:
  // x − τ_eff (x − z̄), or the momentum form (file comment). kInternal outside a FedNova
  // Aggregation's finish().
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds v (its tensors, under their kFedNovaVelocityPrefix names).
  Status save_extra_state(TensorBundle* state) const override;
  // Reads v back (absent: 0). kInvalidArgument for a tensor other than the v of a tensor of
  // `global` that fednova_normalizes, or one that is not float64 of that tensor's shape.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  friend class FedNovaAggregation;

  // Constant after construction.
  const FedNovaOptions options_;

  std::optional<LocalTrainOptions> local_;  // set by initialize or resume
  TensorBundle velocity_;                   // v; empty = 0
  // The expected_update of fit tasks; made by configure_fit, reset by initialize / load_state.
  std::shared_ptr<const TensorBundle> expected_;
  // τ_eff of the round, set by FedNovaAggregation::finish for next_global, then reset.
  double round_tau_eff_ = 0;
};

// The FedNova client (file comment). fit: loads the task bundle into context.model (strictly),
// trains as FedAvgClient, and returns z_i (and the non-normalised tensors as trained) plus
// kFedNovaATensor, with num_examples = the training set size and metrics {"loss", "steps", "a"}.
// evaluate: FedAvgClient's. Errors: kInvalidArgument for a context without model, config,
// training data or rng, or a bundle that does not fit the model; kInternal when training took no
// step; those of train_local.
class FedNovaClient final : public FedAvgClient {
 public:
  FedNovaClient() = default;
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
};

// Factories for the registry: config.strategy is parsed with parse_fednova_options.
Result<std::unique_ptr<ServerStrategy>> make_fednova_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fednova_client(const nlohmann::json& config);

// The registry entry "fednova".
StrategyEntry fednova_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDNOVA_FEDNOVA_H_
