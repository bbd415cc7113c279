// FedETF (Li et al., "No Fear of Classifier Biases: Neural Collapse Inspired Federated Learning
// with Synthetic and Fixed Classifier", ICCV 2023): features are projected, normalised onto the
// unit sphere and classified by a fixed simplex equiangular tight frame (ETF) that the server draws
// once, with a learnable temperature and the balanced-softmax loss; after federated training each
// client adapts the global model to its own data. As the authors' code does it
// (github.com/ZexiLee/ICCV-2023-FedETF):
//
//   - Model: f = backbone(x); z = projection(f), the model's "classifier" head (Linear(feature_dim,
//     K) with bias); h = z / max(‖z‖, 1e-12); logits = β · hᵀM.
//   - The ETF M, d×K with d = K (the code fixes d = K): P = the orthonormal columns of a d×K matrix
//     of uniform [0, 1) draws (PᵀP = I), M = sqrt(K/(K−1)) · P (I_K − 11ᵀ/K): unit-norm columns,
//     pairwise cosine −1/(K−1) (make_simplex_etf). Drawn by the server in initialize() from an Rng
//     derived from its Rng; never trained and never averaged. Every global bundle carries the
//     server's M as "etf.matrix"; clients upload it unchanged (the aggregation wants the global
//     bundle's tensors), and the server copies its own M back over each round's mean, so an update
//     carrying another M changes nothing.
//   - The temperature β ("etf.temperature", a float32 scalar, 1.0 at first): trained by the clients
//     together with the model (an nn.Parameter of the authors' model, so with config.local's weight
//     decay) and averaged like any weight.
//   - Client fit: config.local's SGD (lr, momentum, weight_decay; a fresh optimiser per task), its
//     epochs, batch size and augmentation, over the backbone, the projection and β, on the
//     balanced feature loss CE(β·hᵀM + log n_c, y), n_c the client's training examples of class c
//     with 0 counted as 1 (the code's sample_per_class: log 0 becomes 0). Upload: the whole model
//     state (BatchNorm buffers included), β and M; num_examples = the training set size.
//   - Local adaptation (the code's Client_personalization), when the server asks for a federated
//     evaluation: from the global model, (1) one more fit-like training as above, then (2)
//     `finetune_cycles` times: (a) the client's own copy of M alone, `finetune_epochs` epochs of
//     plain CE on β·hᵀM, SGD lr `etf_lr` without momentum or weight decay; (b) the projection
//     alone, `finetune_epochs` epochs of plain CE, SGD lr `projection_lr` with config.local's
//     momentum and weight decay (the code's args.momentum and args.local_wd_rate: 0.9 and 5e-4 by
//     default). The backbone and β are frozen in (2); the model stays in training mode as in the
//     code, so BatchNorm normalises by batch statistics and its running statistics follow the
//     batches. The adapted model is scored on the client's test set and dropped: FedETF keeps no
//     client state.
//
// Evaluation. 1/max(‖z‖, 1e-12) scales a row of logits by a positive number, which does not
// change its argmax, so both evaluations fold the classifier into one linear map,
// argmax(β·hᵀM) = argmax(β·Mᵀ(W f + b)) (fold_etf_head; the same prediction up to rounding in a
// near tie), put it in the "classifier" slot and reuse strategies/classifier_eval.h:
//   - server, on its balanced test set: {"generic", "generic_by_count_rule"} as evaluate_classifier
//     reports them, for the global model, plus "temperature": the global β;
//   - client: evaluate_classifier_on_client's keys (config.eval.mask_absent_classes honoured) for
//     the adapted model, plus "adapt_loss", "adapt_steps" (step 1), "finetune_loss_etf",
//     "finetune_loss_projection" (mean CE of the last cycle's phases; null without cycles),
//     "finetune_steps" (step 2) and "etf_shift" (‖M_k − M‖_F, how far the client's ETF moved).
//
// When (option "finetune_at"): "final", the code's protocol, adapts and scores every available
// client once, after the last round: configure_evaluate gives no task before round total_rounds
// (so the rounds before report no personalised accuracy rather than one with another meaning) and
// one task per available client at it, whatever fraction_evaluate (fraction_evaluate and
// min_evaluate_clients both 0 still switch federated evaluation off). The server learns the last
// round from RunContext::total_rounds in initialize() and keeps it in its saved state, since a
// resumed server is only given load_state(); the coordinator resumes only under the same config
// (its digest covers --rounds), so the saved value is the run's. "every": adaptation at every
// federated evaluation, clients sampled as FedAvg samples them.
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h); defaults from the authors'
// code (client_funct.py, Client_personalization):
//   "finetune_at"      "final"  "final" or "every" (above)
//   "finetune_cycles"  20       ETF/projection alternations of step (2), >= 0 (0: score after (1))
//   "finetune_epochs"  3        epochs of each phase of a cycle, >= 1
//   "etf_lr"           0.1      SGD learning rate of the ETF phase, > 0
//   "projection_lr"    0.05     SGD learning rate of the projection phase, > 0
// config.local.loss must be "ce" (FedETF trains with its own loss; the server refuses others).
//
// Differences from the authors' code, on purpose: the optimiser (and its momentum buffer) is fresh
// for every task, as for every fedtail strategy (the code keeps one per client for the whole run);
// P comes from Gram–Schmidt in double precision rather than numpy's QR (the same column space;
// columns may differ in sign, which changes nothing), so that it needs no LAPACK; personalised
// accuracy is measured on the client's test set (the code holds out 30% of its training data).
//
// Threading: as ServerStrategy / ClientAlgorithm (strategies/strategy.h): one thread at a time.
#ifndef FEDTAIL_STRATEGIES_FEDETF_FEDETF_H_
#define FEDTAIL_STRATEGIES_FEDETF_FEDETF_H_

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/learning/model_options.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// Names of FedETF's tensors in the global bundle, beside the model's ("backbone.*", "heads.*"); no
// '/' in them, so FedAvgServer keeps them with the global tensors in its saved state.
inline constexpr char kEtfMatrixName[] = "etf.matrix";            // M: float32 K×K, fixed
inline constexpr char kEtfTemperatureName[] = "etf.temperature";  // β: float32 scalar, averaged

struct FedEtfOptions {
  RoundOptions round;
  bool finetune_every = false;  // "finetune_at": "every" (true) or "final" (false)
  int finetune_cycles = 20;
  int finetune_epochs = 3;
  double etf_lr = 0.1;
  double projection_lr = 0.05;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.etf_lr: must be > 0 (got -1)") or an unknown key.
Result<FedEtfOptions> parse_fedetf_options(const nlohmann::json& config);

// The simplex ETF M (file comment) for `num_classes` = K classes, from K×K draws of `rng` (row by
// row), as a float32 K×K tensor named kEtfMatrixName, row-major: column c is class c's vector. The
// same Rng state gives the same bits. kInvalidArgument when K < 2 or K×K overflows; kInternal in
// the (probability zero) case that the draws are linearly dependent.
Result<NamedTensor> make_simplex_etf(int64_t num_classes, Rng& rng);

// OK when `bundle` holds kEtfMatrixName as a float32 K×K tensor (K = `num_classes`) and
// kEtfTemperatureName as a float32 scalar; otherwise kInvalidArgument
// "<where>: tensor \"etf.matrix\": missing" or naming its dtype and shape and the expected ones.
Status check_etf_tensors(const TensorBundle& bundle, int64_t num_classes, const std::string& where);

// The classifier folded into one linear map with the same argmax as β·hᵀM, whatever the sign of
// β: (β·Mᵀ·weight, β·Mᵀ·bias) for the projection's `weight` (d×feature_dim) and `bias` (d), the
// ETF `matrix` (d×K) and β = `temperature`, computed in double and returned in weight's and bias's
// dtypes, on their device. Its logits are β·hᵀM times max(‖z‖, 1e-12) row by row. Throws
// c10::Error on a shape mismatch.
std::pair<torch::Tensor, torch::Tensor> fold_etf_head(const torch::Tensor& weight,
                                                      const torch::Tensor& bias,
                                                      const torch::Tensor& matrix,
                                                      double temperature);

class FedEtfServer final : public FedAvgServer {
 public:
  explicit FedEtfServer(FedEtfOptions options);

  // Builds the model from run.config->model (num_classes from the run when 0) with draws from
  // `rng`, then M from an Rng derived from a further draw; the global bundle is the model's state,
  // kEtfTemperatureName = 1 and kEtfMatrixName. Keeps run.total_rounds. Errors: those of
  // run_model_options (model groups are refused) and make_model; kInvalidArgument for a
  // config.local.loss other than "ce" (require_cross_entropy), fewer than 2 classes, or, under
  // "final", run.total_rounds < 1.
  Status initialize(const RunContext& run, Rng& rng) override;

  // "every": as FedAvgServer. "final": no task before round total_rounds(); at it, every
  // available client (kFailedPrecondition when fewer than min_evaluate_clients), none when
  // fraction_evaluate and min_evaluate_clients are both 0. Tasks carry global_bundle().
  // kFailedPrecondition before initialize/load_state.
  Result<std::vector<TaskSpec>> configure_evaluate(int round,
                                                   const std::vector<ClientInfo>& available,
                                                   Rng& rng) override;

  // The file comment's server metrics. Errors: kFailedPrecondition before initialize/load_state;
  // those of evaluate_classifier (e.g. kInvalidArgument without a test set).
  Result<nlohmann::json> evaluate(int round, const ServerEvalContext& context) override;

  const FedEtfOptions& options() const { return options_; }
  // The run's last round, from initialize or the saved state.
  int total_rounds() const { return total_rounds_; }

 protected:
  // The round's mean with the current global M copied over its kEtfMatrixName.
  Result<TensorBundle> next_global(int round, TensorBundle average) override;
  // Adds metadata "total_rounds".
  Status save_extra_state(TensorBundle* state) const override;
  // Takes "total_rounds" and the model and input options from the metadata, after checking that
  // `global` holds kEtfMatrixName (float32 K×K, K = the classifier's outputs) and
  // kEtfTemperatureName (float32 scalar). kInvalidArgument naming what is missing or misshapen,
  // or for any extra ('/') tensor.
  Status load_extra_state(TensorBundle extra, const nlohmann::json& metadata,
                          const TensorBundle& global) override;

 private:
  // Constant after construction.
  const FedEtfOptions options_;

  // Set by initialize or load_state.
  ModelOptions model_options_;  // rebuilds the model for evaluate()
  AugmentOptions input_;        // the run's local.augment (input normalisation)
  int total_rounds_ = 0;
};

// The FedETF client. fit: loads the task's bundle into context.model (exactly the model's tensors,
// plus M and β), trains as the file comment says and returns the model's module_state, β and M
// (unchanged), with num_examples = the training set size and metrics {"loss" (the balanced
// loss), "steps"}. evaluate: local adaptation and the file comment's report; without training
// data (null or empty context.train) the global model is scored unadapted. context.model is left
// holding the adapted backbone and projection; context.state is not used.
// Errors: kInvalidArgument for a context without model or config (fit, or evaluate with training
// data: or rng), or a bundle that does not hold exactly the model's tensors, M and β with the
// right shapes; kFailedPrecondition for fit without training
// data; kInternal for a LibTorch failure or a non-finite loss.
class FedEtfClient final : public ClientAlgorithm {
 public:
  explicit FedEtfClient(FedEtfOptions options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  Result<nlohmann::json> evaluate(ClientContext& context, const TensorBundle& global) override;

 private:
  const FedEtfOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_fedetf_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_fedetf_client(const nlohmann::json& config);

// The registry entry "fedetf".
StrategyEntry fedetf_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDETF_FEDETF_H_
