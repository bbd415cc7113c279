// MOON (Li, He & Song, "Model-Contrastive Federated Learning", CVPR 2021): FedAvg whose clients
// minimise, per batch,
//   ℓ = loss(logits, y) + μ · ℓ_con,
//   ℓ_con = −log( exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) ),
// averaged over the batch's examples, where sim is the cosine similarity (eps 1e-8, PyTorch's
// CosineSimilarity), z the representation of x by the model being trained, z_glob by the global
// model the round started from, z_prev by this client's previous local model: the contrastive term
// pulls the local representation towards the global model's and away from the previous local
// model's. `loss` is config.local.loss (cross-entropy by default, as in the paper).
//
// As the authors' code does it (github.com/QinbinLi/MOON, main.py train_net_fedcon and the moon
// branch of __main__, model.py ModelFedCon), except where noted:
//   - ℓ_con is the cross-entropy of the logits [sim(z, z_glob), sim(z, z_prev)] / τ against label
//     0, the mean over the batch; z_glob and z_prev come from frozen copies of the two models in
//     eval mode (BatchNorm running statistics), without gradient, on the same (augmented) batch.
//   - The previous model is the model the client trained and uploaded in the last round it took
//     part in (model_buffer_size 1, the code's default), kept in the client's ClientState.
//   - A client without a previous model (its first round) trains exactly as FedAvg does, bit for
//     bit. The authors' main.py starts round 1 with an empty model pool (load_first_net builds
//     old_nets but never appends them), so its contrastive logits have only the positive column
//     and ℓ_con = 0; Flower's MOON baseline (baselines/moon, by the same first author) uses the
//     global model as the previous one, so that both similarities are equal and ℓ_con = log 2, a
//     constant. Both have zero gradient: we skip the term (and its two forward passes). For a
//     client first sampled after round 1 the authors' code takes its never-trained initial network
//     as the previous model; fedtail's clients have no such model and skip the term then too.
//   - The representation z: ModelFedCon feeds the base network's features through a projection
//     head (Linear, ReLU, Linear to out_dim = 256) and its output layer l3 reads the projection's
//     output, which is the z of the loss. fedtail's models expose features(x), the input of the
//     "classifier" head, so z = features(x): the same place in the network. A projection head is
//     config.model.feature_dim (a Linear + ReLU on the backbone's output): one layer instead of
//     two and non-negative (as every fedtail feature), so similarities lie in [0, 1]. No separate
//     head is added: it would change the architecture compared with the other strategies.
//   - The server is FedAvg's (FedAvgServer "moon"): the example-weighted mean of every state
//     tensor (the code's fed_avg_freqs over every state_dict key).
//   - The paper's local training (SGD, lr 0.01, momentum 0.9, weight decay 1e-5, batch 64, 10
//     epochs) is config.local, shared by every strategy: set it there.
//
// config.strategy keys, besides RoundOptions (strategies/sampling.h):
//   "mu"           1.0  μ, >= 0 (the code's default; the paper uses 5 on CIFAR-10, 1 on CIFAR-100
//                       and Tiny-ImageNet). 0 trains exactly as FedAvg does.
//   "temperature"  0.5  τ, > 0 (the code's and the paper's).
//
// State: ClientState::tensors holds the client's previous local model (its whole module state,
// under the model's own names), replaced after every fit; the server's is FedAvg's.
// Cost on the client: two frozen copies of the model on the training device while it trains, and
// two forward passes without gradient per batch.
//
// Threading: as ClientAlgorithm (strategies/strategy.h). Free functions are reentrant.
#ifndef FEDTAIL_STRATEGIES_MOON_MOON_H_
#define FEDTAIL_STRATEGIES_MOON_MOON_H_

#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "common/learning/classification_loss.h"
#include "common/learning/models.h"
#include "common/learning/train_loop.h"
#include "strategies/fedavg/fedavg.h"
#include "strategies/registry.h"
#include "strategies/sampling.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

struct MoonOptions {
  RoundOptions round;
  // μ, the weight of the contrastive term, >= 0. Default 1 (the code's).
  double mu = 1.0;
  // τ, the temperature of the similarities, > 0. Default 0.5.
  double temperature = 0.5;
};

// Reads config.strategy (null counts as {}). kInvalidArgument naming the field for a bad value
// ("config.strategy.temperature: must be > 0 (got 0)") or an unknown key.
Result<MoonOptions> parse_moon_options(const nlohmann::json& config);

// ℓ_con of the file comment, the mean over the rows of `z` (N×d, with a graph when training),
// `z_global` and `z_previous` (N×d each, same dtype and device): the cross-entropy of
// [cos(z, z_global), cos(z, z_previous)] / temperature against class 0. Throws c10::Error on a
// shape mismatch (train_local catches it).
torch::Tensor moon_contrastive_loss(const torch::Tensor& z, const torch::Tensor& z_global,
                                    const torch::Tensor& z_previous, double temperature);

// The batch loss base(classifier(z), y) + mu · moon_contrastive_loss(z, global(x), previous(x)),
// z = model->features(x) (one backbone pass: the classifier head reads the same z). `global` and
// `previous` are run under NoGradGuard as they are (put them in eval mode and freeze them first).
// When `contrastive_sum` is not null, Σ over batches of batch size · ℓ_con is added to it (a
// float64 scalar on the training device) for the metrics.
LossFn moon_loss(Model model, ClassificationLoss base, Model global, Model previous, double mu,
                 double temperature, std::shared_ptr<torch::Tensor> contrastive_sum = nullptr);

// The MOON client (file comment). fit: loads the task's bundle into context.model (strictly);
// with a previous model in context.state->tensors and mu > 0, trains with train_local
// (config.local) on moon_loss, the frozen global model being a copy of the loaded bundle and the
// previous model a copy loaded from the state; otherwise trains as FedAvgClient::train. Then
// stores the trained module state in context.state->tensors (replacing it) and returns it, with
// num_examples = the training set size and metrics {"loss": mean training loss (the contrastive
// term included), "steps", "contrastive": whether the term was used, "loss_contrastive": mean ℓ_con
// (null when not used)}. evaluate: FedAvgClient's (the global model).
// Errors: kInvalidArgument for a context without model, config, training data, rng or state, or a
// bundle that does not fit the model; the errors of load_module_state (naming "client state of
// <id>") for a stored previous model that does not fit it, the state then unchanged; those of
// train_local; kInternal for a LibTorch failure.
class MoonClient final : public FedAvgClient {
 public:
  explicit MoonClient(const MoonOptions& options) : options_(options) {}
  Result<FitOutput> fit(ClientContext& context, const TensorBundle& global) override;
  const MoonOptions& options() const { return options_; }

 private:
  const MoonOptions options_;  // constant after construction
};

Result<std::unique_ptr<ServerStrategy>> make_moon_server(const nlohmann::json& config);
Result<std::unique_ptr<ClientAlgorithm>> make_moon_client(const nlohmann::json& config);

// The registry entry "moon".
StrategyEntry moon_strategy_entry();

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_MOON_MOON_H_
