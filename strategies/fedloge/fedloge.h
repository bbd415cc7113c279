// FedLoGe (Xiao et al., ICLR 2024): a shared backbone trained against a fixed sparse equiangular
// classifier (SSE-C), an auxiliary global head ψ and a local head φ_k per client, realigned after
// training by their norms (GLA-FR). As the authors' code does it:
//
//   - SSE-C (strategies/fedloge/sse_c.h): built once by the server in initialize() from its Rng,
//     frozen for the whole run (weight and bias never trained), sent in every task bundle as
//     "heads.sse_c.weight"/"heads.sse_c.bias", so every client uses the identical tensor.
//   - Client (fit), per batch of config.local, three separate SGD steps with cross-entropy:
//       f = backbone(x);  backbone ← CE(SSE-C(f), y);  ψ ← CE(ψ(f.detach()), y);
//       φ_k ← CE(φ_k(f.detach()), y).
//     φ_k ("heads.local.*") lives in ClientState::tensors: never uploaded, kept across rounds and
//     restarts. The update is the backbone (BatchNorm buffers included) and ψ ("heads.global.*").
//   - Server: backbone and ψ averaged weighted by the clients' sample counts (FedAvgServer).
//   - GLA-FR, training-free, at evaluation:
//       generic head ψ̃_c = realign_norm · ψ_c / ‖ψ_c‖ (bias b_ψ unchanged);
//       personalised logits z_k(x) = φ_k(f) + diag(‖φ_k,c‖)·W_ψ f + b_ψ (raw ψ, not ψ̃).
//
// Evaluation. Server (the coordinator's balanced test set, one pass): "generic" = ψ̃ (the realigned
// ψ; raw ψ when global_realignment is off), "universal" = SSE-C, "generic_unrealigned" = raw ψ,
// each an AccuracyReport with groups by cumulative share, plus "<key>_by_count_rule" with groups by
// count, "psi_row_norms" (‖ψ_c‖, the long-tail norm bias GLA-FR undoes), "sse_c" (its geometry)
// and "realignment". Client: z_k on the client's test set, classes absent from its training data
// masked only when config.eval.mask_absent_classes (the reference masks always: a protocol
// advantage, research §1.4), with the keys of evaluate_classifier_on_client.
//
// config.strategy keys (published values as defaults), besides RoundOptions:
//   "sparsity"           0.6   fraction of SSE-C entries pruned, [0, 1); 0 = a dense ETF
//   "column_norm"        0.1   SSE-C class-vector norm, > 0
//   "sse_c_steps"        10000 Adam steps re-optimising the SSE-C, >= 0
//   "sse_c_lr"           1e-4  their learning rate, > 0
//   "global_realignment" true  generic head = ψ̃ (false: raw ψ)
//   "realign_norm"       1.7   the norm of ψ̃'s rows, > 0
//   "local_realignment"  true  personalised logits use diag(‖φ_k,c‖)·W_ψ (false: W_ψ, the
//                              reference's training-time "local" accuracy)
// Local training uses config.local (epochs, batch_size, lr, momentum, weight_decay, augment,
// max_steps) for all three optimisers, as every baseline does; the published FedLoGe values are
// lr 0.03, momentum 0.5, weight_decay 0, batch_size 8, epochs 5 (set them in the run config).
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_H_
#define FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_H_

#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/fedloge/sse_c.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// Model head names. The "classifier" head every Model has is not trained; the client uses it
// only to hold the folded personalised head during evaluation.
inline constexpr char kSseCHead[] = "sse_c";     // the frozen SSE-C
inline constexpr char kGlobalHead[] = "global";  // ψ, aggregated
inline constexpr char kLocalHead[] = "local";    // φ_k, private

struct FedLoGeOptions {
  RoundOptions round;
  SseCOptions sse_c;               // keys sparsity, column_norm, sse_c_steps, sse_c_lr
  bool global_realignment = true;  // the generic head is ψ̃, not ψ
  double realign_norm = 1.7;       // ‖ψ̃_c‖
  bool local_realignment = true;   // diag(‖φ_k,c‖)·W_ψ in the personalised logits
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.sparsity: must be in [0, 1) (got 1)") or an unknown key.
Result<FedLoGeOptions> parse_fedloge_options(const nlohmann::json& config);

// GLA-FR, global: `weight` (K×d) with every row scaled to L2 norm `norm`; all-zero rows stay zero.
torch::Tensor realign_rows(const torch::Tensor& weight, double norm);

// GLA-FR, local: the personalised head as one linear map (weight K×d, bias K), so that
//   weight·f + bias = φ(f) + diag(‖φ_c‖)·W_ψ f + b_ψ   (local_realignment)
//                   = φ(f) + W_ψ f + b_ψ               (otherwise).
// Shapes must agree (LibTorch throws otherwise).
std::pair<torch::Tensor, torch::Tensor> personalized_head(const torch::Tensor& phi_weight,
                                                          const torch::Tensor& phi_bias,
                                                          const torch::Tensor& psi_weight,
                                                          const torch::Tensor& psi_bias,
                                                          bool local_realignment);

class FedLoGeServer final : public FedAvgServer {
 public:
  explicit FedLoGeServer(FedLoGeOptions options);

  // Builds the model from run.config->model (num_classes from the run when 0) with draws from
  // `rng`, adds ψ, and builds the SSE-C from a further draw (sse_c.h; its geometry is logged).
  // The global state is the backbone and ψ. Errors: those of run_model_options, make_model and
  // build_sse_c (e.g. feature_dim < num_classes).
  Status initialize(const RunContext& run, Rng& rng) override;

  // As FedAvgServer, with every task's bundle = global_bundle() (the SSE-C included).
  Result<std::vector<TaskSpec>> configure_fit(int round, const std::vector<ClientInfo>& available,
                                              Rng& rng) override;
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;

  // The metrics described in the file comment. kInvalidArgument without a test set;
  // kFailedPrecondition before initialize/load_state.
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  // The backbone, ψ and the SSE-C ("heads.sse_c.*"), with the global metadata. Rebuilt (one copy)
  // when the global model changes. Null before initialize/load_state.
  std::shared_ptr<const TensorBundle> global_bundle() const override;

  const FedLoGeOptions& options() const { return options_; }
  // The SSE-C's geometry (SseCStats::to_json without the time); null before initialize/load.
  const nlohmann::json& sse_c_stats() const { return sse_c_stats_; }

 protected:
  // Adds "sse_c/weight", "sse_c/bias" and metadata "sse_c" (the geometry).
  Status save_extra_state(TensorBundle* state) const override;
  // Takes the SSE-C back (K×d float32 weight and K bias matching ψ), and the model and input
  // options from the metadata. kInvalidArgument when a tensor is missing, extra or misshapen.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  // Constant after construction.
  const FedLoGeOptions options_;

  // Set by initialize or load_state.
  ModelOptions model_options_;                 // rebuilds the model for evaluate()
  AugmentOptions input_;                       // the run's local.augment (input normalisation)
  std::shared_ptr<const TensorBundle> sse_c_;  // "heads.sse_c.weight", "heads.sse_c.bias"
  nlohmann::json sse_c_stats_;

  // Cache of global_bundle(): the combined bundle and the FedAvgServer bundle it was built from.
  mutable std::shared_ptr<const TensorBundle> bundle_source_;
  mutable std::shared_ptr<const TensorBundle> bundle_;
};

// The FedLoGe client. fit: loads the task's backbone, ψ and SSE-C into context.model (adding the
// heads "sse_c", "global", "local" when the model lacks them), loads φ_k from context.state (or
// initialises it, U(±1/√d) like nn.Linear, from Rng::derive(config.seed, "fedloge.local_head." +
// client id), so a client's first φ_k does not depend on when it first takes part), trains as the
// file comment says, stores φ_k back in context.state and returns the backbone and ψ, with
// num_examples = the training set size and metrics {"loss" (the backbone's SSE-C loss),
// "loss_global", "loss_local", "steps"}. evaluate: the personalised logits z_k on context.test
// (evaluate_classifier_on_client, with the folded head in the "classifier" slot).
// Errors: kInvalidArgument for a context without model, config, state (fit: train data, rng), a
// bundle that does not hold exactly the backbone, ψ and SSE-C of the model, or a stored φ_k of
// the wrong shape; kFailedPrecondition for empty training data; kInternal for a LibTorch failure
// or a non-finite loss.
class FedLoGeClient final : public ClientAlgorithm {
 public:
  explicit FedLoGeClient(bool local_realignment) : local_realignment_(local_realignment) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 private:
  const bool local_realignment_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedloge_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedloge_client(const nlohmann::json& config);

// The registry entry "fedloge".
StrategyEntry fedloge_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDLOGE_FEDLOGE_H_
