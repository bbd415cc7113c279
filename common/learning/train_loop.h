// The local training loop and batched prediction.
//
// for_each_batch is the primitive: it slices a Dataset into (optionally shuffled, optionally
// augmented) batches on a device. train_local runs plain SGD with cross-entropy on top of it;
// strategies with other losses (FedProx's proximal term, FedLoGe's heads) pass a LossFn to
// train_local or write their own step on for_each_batch. predict* evaluate under NoGradGuard.
//
// Errors: LibTorch throws c10::Error (bad shapes, out of memory); every function here catches it
// and returns kInternal with LibTorch's message, so no exception leaves this file.
// Thread-safety: functions are reentrant; a Model must not be used by two calls at once.
#ifndef FEDTAIL_COMMON_LEARNING_TRAIN_LOOP_H_
#define FEDTAIL_COMMON_LEARNING_TRAIN_LOOP_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/augment.h"
#include "common/data/dataset.h"
#include "common/learning/metrics.h"
#include "common/learning/models.h"
#include "common/learning/train_options.h"

namespace fedtail {

struct BatchOptions {
  // Examples per batch; the last batch holds the remainder. >= 1.
  int batch_size = 32;
  // Visit the examples in an order drawn from the Rng (a fresh permutation per call). false:
  // dataset order.
  bool shuffle = false;
  // Training path (random crop/flip from the Rng) instead of the evaluation path (normalise only).
  bool augment = false;
  // Drop a last batch smaller than batch_size (BatchNorm dislikes batches of 1). Default false.
  bool drop_last = false;
  // Stop after this many batches. 0 (default) = all.
  int64_t max_batches = 0;
};

// Called once per batch: x float B×C×H×W and y int64 B, both on the device.
using BatchFn = std::function<Status(const torch::Tensor& x, const torch::Tensor& y)>;

// Runs `fn` on consecutive batches of `data`, converted by `augmenter` on its device. The images
// are moved to the device once per call, then indexed there. `rng` is used for the permutation and
// the augmentation, and may be null when neither shuffle nor augment is set. Returns the first
// non-OK Status of `fn` (stopping there), kInvalidArgument for batch_size < 1 or a null rng when
// one is needed, kInternal for a LibTorch exception thrown by the loop or by `fn`. An empty dataset
// calls `fn` zero times and returns OK.
Status for_each_batch(const Dataset& data, const BatchOptions& options, const Augmenter& augmenter,
                      Rng* rng, const BatchFn& fn);

struct TrainStats {
  double mean_loss = 0;            // example-weighted mean loss over all steps of all epochs
  std::vector<double> epoch_loss;  // example-weighted mean loss of each epoch
  int64_t examples = 0;            // examples processed (epochs × dataset size, less under a cap)
  int64_t steps = 0;               // SGD steps taken
  double seconds = 0;              // wall time of the whole call
};

// Returns the loss of one batch (a scalar tensor with a graph to the trainable parameters): the
// hook strategies use to change the objective. x and y are on the training device.
using LossFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& y)>;

// Trains `model` on `data` with SGD (options.lr, momentum, weight_decay; a fresh optimiser per
// call) over every parameter with requires_grad, for options.epochs shuffled, augmented passes
// (capped at options.max_steps steps), minimising options.loss (ClassificationLoss: cross-entropy
// by default) of the "classifier" head, with `data`'s class counts as the client's and
// `global_counts` as the run's (needed only by a loss with "counts": "global").
// Moves the model to `device` and leaves it in training mode. `rng` drives shuffling and
// augmentation. Losses are accumulated on the device and read once per epoch.
// Errors: kFailedPrecondition when `data` is empty; kInvalidArgument for a bad option, counts the
// loss cannot use, or a channel count that the augmenter rejects; kInternal for a LibTorch failure
// or a non-finite loss.
Result<TrainStats> train_local(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng,
                               const std::vector<int64_t>& global_counts = {});
// The same loop with the loss computed by `loss_fn` (e.g. cross-entropy + a proximal term);
// options.loss is not read.
Result<TrainStats> train_local(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng, const LossFn& loss_fn);

// Maps backbone features (N×feature_dim, on the device) to logits (N×K).
using LogitsFn = std::function<torch::Tensor(const torch::Tensor& features)>;

// Inference (predict*, extract_features, FeatureCache) runs every batch with at least this many
// rows: a smaller batch (a data set's last) is padded by repeating its last row, and the padding's
// outputs are dropped. LibTorch's CPU kernels take other code paths for a handful of rows, whose
// results differ in the last bits from the same rows in a larger batch; the padding keeps every
// batch on the main path, so that features computed in different batches agree (FeatureCache
// relies on it).
constexpr int64_t kMinInferenceRows = 16;

// fn(x with rows repeated up to kMinInferenceRows), cut back to x.size(0) rows along dim 0.
torch::Tensor apply_padded(const torch::Tensor& x,
                           const std::function<torch::Tensor(const torch::Tensor&)>& fn);

// Logits of `logits_fn` on every example of `data`, in dataset order, as float N×K on the CPU.
// Moves the model to `device`. Runs under NoGradGuard with the model in eval mode (its previous
// mode is restored), in batches of `batch_size`, with inputs normalised by `input` (the training
// AugmentOptions; only normalize, mean and std are used). Outputs stay on the device until the end
// (one copy to the CPU). An empty dataset gives an empty tensor. Errors: kInvalidArgument for
// batch_size < 1 or bad normalisation options, kInternal for a LibTorch failure.
Result<torch::Tensor> predict_logits(Model& model, const Dataset& data, const LogitsFn& logits_fn,
                                     const AugmentOptions& input, torch::Device device,
                                     int batch_size);
// Arg-max class of `logits_fn` per example: int64 N on the CPU. Same contract as predict_logits.
Result<torch::Tensor> predict_with(Model& model, const Dataset& data, const LogitsFn& logits_fn,
                                   const AugmentOptions& input, torch::Device device,
                                   int batch_size);
// Arg-max class of head `head` (default "classifier") per example: int64 N on the CPU.
// kInvalidArgument when the model has no such head; otherwise the contract of predict_logits.
Result<torch::Tensor> predict(Model& model, const Dataset& data, const AugmentOptions& input,
                              torch::Device device, int batch_size,
                              const std::string& head = kClassifierHead);
// Backbone features of every example (float N×feature_dim on the CPU), e.g. for prototypes.
// Same contract as predict_logits.
Result<torch::Tensor> extract_features(Model& model, const Dataset& data,
                                       const AugmentOptions& input, torch::Device device,
                                       int batch_size);

// predict() on `data`, then accuracy_report() against its labels with `groups` (e.g.
// groups_by_cumulative_share of the training counts). Errors: those of predict and accuracy_report.
Result<AccuracyReport> evaluate_accuracy(Model& model, const Dataset& data,
                                         const ClassGroups& groups, const AugmentOptions& input,
                                         torch::Device device, int batch_size,
                                         const std::string& head = kClassifierHead);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_TRAIN_LOOP_H_
