// Options of local training ("local" config section) and of evaluation ("eval" section).
#ifndef FEDTAIL_COMMON_LEARNING_TRAIN_OPTIONS_H_
#define FEDTAIL_COMMON_LEARNING_TRAIN_OPTIONS_H_

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "common/base/status.h"
#include "common/data/augment.h"

namespace fedtail {

// The classification loss of local training ("loss" in the "local" section): a string naming the
// kind, or an object {"name": kind, ...options}. Applied by train_local (common/learning/
// train_loop.h) through ClassificationLoss (common/learning/classification_loss.h); strategies
// with their own loss (FedLoGe, FedRoD, FedProto, FedSA, FedETF) refuse any kind but "ce".
struct LocalLossOptions {
  enum class Kind {
    kCrossEntropy,     // "ce": plain cross-entropy (default)
    kBalancedSoftmax,  // "balanced_softmax": CE(logits + tau · log n_c) (Ren et al., NeurIPS 2020)
    kFocal,            // "focal": mean of -(1 - p_y)^gamma · log p_y (Lin et al., ICCV 2017)
    kClassWeighted,  // "class_weighted": CE weighted by n / (classes present · n_c), weighted mean
  };
  Kind kind = Kind::kCrossEntropy;
  // balanced_softmax, class_weighted: whose class counts n_c: the client's own training counts
  // ("client", default) or the run's global long-tailed training counts ("global").
  bool global_counts = false;
  // balanced_softmax: weight of the log-count adjustment, >= 0; default 1 (0 is plain CE).
  double tau = 1.0;
  // focal: focusing exponent, >= 0; default 2 (the paper's; 0 is plain CE).
  double gamma = 2.0;
};

// "ce", "balanced_softmax", "focal" or "class_weighted".
const char* loss_kind_name(LocalLossOptions::Kind kind);

struct LocalTrainOptions {
  // Passes over the client's training set per round. >= 1; default 1.
  int epochs = 1;
  // Examples per SGD step (the last batch of an epoch may be smaller). >= 1; default 32.
  int batch_size = 32;
  // SGD learning rate. > 0; default 0.01.
  double lr = 0.01;
  // SGD momentum in [0, 1); default 0.9. The momentum buffer starts at zero every round.
  double momentum = 0.9;
  // L2 penalty added to the gradient (SGD weight_decay). >= 0; default 5e-4.
  double weight_decay = 5e-4;
  // Augmentation and normalisation of training batches (section "augment").
  AugmentOptions augment;
  // Cap on SGD steps per round over all epochs. 0 (default) = no cap.
  int64_t max_steps = 0;
  // The classification loss (key "loss"). Default: cross-entropy.
  LocalLossOptions loss;
};

struct EvalOptions {
  // Examples per forward pass. >= 1; default 512.
  int batch_size = 512;
  // Personalised evaluation: set the logits of classes absent from the client's training data to
  // -inf (the FedLoGe paper's protocol). Default false: no masking.
  bool mask_absent_classes = false;
  // Evaluate every this many rounds (the last round is always evaluated). >= 1; default 1.
  int every = 1;
};

// Reads the object at `path` (e.g. "config.local"): keys epochs, batch_size, lr, momentum,
// weight_decay, augment (an object, see parse_augment_options), max_steps, loss (see
// parse_local_loss_options). kInvalidArgument
// naming the field for a wrong type (`config.local.lr: expected a number (got "0.1")`), an unknown
// key, or an absurd value: epochs < 1, batch_size < 1, lr <= 0, momentum outside [0, 1),
// weight_decay < 0, max_steps < 0.
Result<LocalTrainOptions> parse_local_train_options(const nlohmann::json& json,
                                                    const std::string& path);

// Reads `json` at `path` (e.g. "config.local.loss"): null (the default), a kind name, or an object
// {"name": kind, "counts": "client"|"global", "tau": x, "gamma": x} whose keys must belong to the
// kind (counts and tau: balanced_softmax; counts: class_weighted; gamma: focal). kInvalidArgument
// naming the field for an unknown kind or key, a key of another kind, tau < 0 or gamma < 0.
Result<LocalLossOptions> parse_local_loss_options(const nlohmann::json& json,
                                                  const std::string& path);

// Reads the object at `path` (e.g. "config.eval"): keys batch_size, mask_absent_classes, every.
// kInvalidArgument naming the field for a wrong type, an unknown key, batch_size < 1 or every < 1.
Result<EvalOptions> parse_eval_options(const nlohmann::json& json, const std::string& path);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_TRAIN_OPTIONS_H_
