#include "strategies/fedsa/fedsa_loss.h"

#include <torch/torch.h>

#include <algorithm>

namespace fedtail::strategies {

namespace F = torch::nn::functional;

torch::Tensor calibration_loss(const torch::Tensor& anchor_logits) {
  const torch::Tensor labels =
      torch::arange(anchor_logits.size(0),
                    torch::TensorOptions().dtype(torch::kInt64).device(anchor_logits.device()));
  return F::cross_entropy(anchor_logits, labels);
}

torch::Tensor anchor_regularization(const torch::Tensor& z, const torch::Tensor& anchors,
                                    const torch::Tensor& y) {
  return F::mse_loss(z, anchors.index_select(0, y));
}

torch::Tensor anchor_distances(const torch::Tensor& z, const torch::Tensor& anchors) {
  const torch::Tensor squared = z.pow(2).sum(/*dim=*/1, /*keepdim=*/true) -
                                2 * z.matmul(anchors.t()) +
                                anchors.pow(2).sum(/*dim=*/1).unsqueeze(0);
  return squared.clamp_min(kMinSquaredDistance).sqrt();
}

torch::Tensor margin_contrastive_loss(const torch::Tensor& z, const torch::Tensor& anchors,
                                      const torch::Tensor& y, double delta) {
  const torch::Tensor one_hot = F::one_hot(y, anchors.size(0)).to(z.scalar_type());
  return F::cross_entropy(-(anchor_distances(z, anchors) + delta * one_hot), y);
}

double margin_delta(double local_gap, double global_gap) { return std::max(local_gap, global_gap); }

double local_gap(const PrototypeSet& previous) { return nearest_distances(previous).mean; }

std::vector<torch::Tensor> fedsa_loss(const torch::Tensor& z, const torch::Tensor& logits,
                                      const torch::Tensor& anchor_logits,
                                      const torch::Tensor& anchors, const torch::Tensor& y,
                                      double delta, const FedSaWeights& weights) {
  torch::Tensor ce = F::cross_entropy(logits, y);
  torch::Tensor cc = calibration_loss(anchor_logits);
  torch::Tensor mse = anchor_regularization(z, anchors, y);
  torch::Tensor mcl = margin_contrastive_loss(z, anchors, y, delta);
  torch::Tensor total = ce + weights.gamma * cc + weights.lambda * mse + weights.mu * mcl;
  return {total, ce, cc, mse, mcl};
}

}  // namespace fedtail::strategies
