// The terms of FedSA's client objective (the FedSA authors' clientsa.py), per
// mini-batch with features z = f(x) (B×D), the client head h, labels y (B) and the anchors A (C×D,
// no gradient):
//
//   L = CE(h(z), y)                                    supervised
//     + γ · CE(h(A), [0..C−1])                         CC: classifier calibration (head only)
//     + λ · MSE(z, A_y)                                anchor regularisation, mean over B·D
//     + μ · CE(−(‖z − A‖ + δ·onehot(y)), y)            MCL: margin-enhanced contrastive
//
// ‖z − A‖ is the plain Euclidean distance (B×C), in the authors' expanded form
// sqrt(‖z‖² − 2 z·a + ‖a‖²), with no temperature. The margin δ = max(local gap, global gap)
// (margin_delta), where a gap is the mean nearest-neighbour distance of a set of class vectors
// (nearest_distances(...).mean): global over the anchors, local over the client's own prototypes
// from its previous participation (0 before its first, −inf when it held one class).
//
// Functions on tensors of any device; they throw c10::Error on bad shapes (callers catch).
#ifndef FEDTAIL_STRATEGIES_FEDSA_FEDSA_LOSS_H_
#define FEDTAIL_STRATEGIES_FEDSA_FEDSA_LOSS_H_

#include <torch/types.h>

#include <vector>

#include "strategies/prototypes/prototype_set.h"

namespace fedtail::strategies {

// Weights of the anchor terms; the published values are the defaults.
struct FedSaWeights {
  double gamma = 1.0;    // CC (-cc)
  double lambda = 10.0;  // anchor MSE (-lam; main.py's default of 1 is not what FedSA runs with)
  double mu = 1.0;       // MCL (-mcl)
};

// The squared distance under which ‖z − a‖ is floored: sqrt's gradient is infinite at 0 (and the
// expanded form can round below 0), which would make the loss NaN for a feature on an anchor.
inline constexpr double kMinSquaredDistance = 1e-12;

// CE(anchor_logits, [0..C−1]) for anchor_logits = h(A), C×C.
torch::Tensor calibration_loss(const torch::Tensor& anchor_logits);
// MSE(z, A[y]), the mean over B·D of (z − A_y)².
torch::Tensor anchor_regularization(const torch::Tensor& z, const torch::Tensor& anchors,
                                    const torch::Tensor& y);
// ‖z_i − a_c‖ (B×C) as sqrt(max(‖z‖² − 2 z·a + ‖a‖², kMinSquaredDistance)).
torch::Tensor anchor_distances(const torch::Tensor& z, const torch::Tensor& anchors);
// CE(−(anchor_distances(z, A) + δ·onehot(y)), y).
torch::Tensor margin_contrastive_loss(const torch::Tensor& z, const torch::Tensor& anchors,
                                      const torch::Tensor& y, double delta);

// δ = max(local_gap, global_gap).
double margin_delta(double local_gap, double global_gap);
// The local gap from the client's previous prototypes (its present classes): the mean
// nearest-neighbour distance; −inf with fewer than 2 classes.
double local_gap(const PrototypeSet& previous);

// {total, ce, cc, mse, mcl}: the four terms (unweighted) and total = ce + γ·cc + λ·mse + μ·mcl.
// `logits` = h(z), `anchor_logits` = h(A).
std::vector<torch::Tensor> fedsa_loss(const torch::Tensor& z, const torch::Tensor& logits,
                                      const torch::Tensor& anchor_logits,
                                      const torch::Tensor& anchors, const torch::Tensor& y,
                                      double delta, const FedSaWeights& weights);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_FEDSA_FEDSA_LOSS_H_
