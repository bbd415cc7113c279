// The epoch loop of local training whose step is the caller's: strategies that take several
// optimiser steps per batch, or compute more than one loss (FedLoGe's three heads, FedRoD's two,
// FedProto's and FedSA's loss terms), run their batches through run_loss_epochs and get the
// example-weighted mean of every value they report, with the step cap and the non-finite check
// every such loop needs. (train_local is the single-loss, single-optimiser case.)
//
// Errors: LibTorch exceptions thrown by the loop or by the step are caught and returned as
// kInternal; no exception leaves this file. Reentrant; a Model must not be used by two calls at
// once.
#ifndef FEDTAIL_COMMON_LEARNING_LOSS_EPOCHS_H_
#define FEDTAIL_COMMON_LEARNING_LOSS_EPOCHS_H_

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/data/dataset.h"
#include "common/learning/train_options.h"

namespace fedtail {

// One batch's work: x float B×C×H×W and y int64 B on the device. Takes the optimiser steps it
// wants and returns the batch's values (a 1-D tensor of as many values as run_loss_epochs was
// given names, on the device, detached; any floating dtype). A non-OK Status stops the loop.
using LossStepFn =
    std::function<Result<torch::Tensor>(const torch::Tensor& x, const torch::Tensor& y)>;

struct LossMeans {
  std::vector<double> means;  // example-weighted mean of each value over every batch
  int64_t steps = 0;          // batches run
  int64_t examples = 0;       // examples seen (epochs × data size, less under the step cap)
};

// Runs options.epochs shuffled, augmented passes over `data` (options.batch_size, options.augment,
// at most options.max_steps batches in all when > 0, a short last batch dropped when `drop_last`)
// on `device`, calling `step` once per batch. The values are summed on the device and read once
// per epoch. Errors: kFailedPrecondition for empty data; kInvalidArgument for bad augmentation
// options; the first error of `step`, with `what` as context; kInternal
// "<what>: the loss <names[i]> is not finite in epoch <e> (try a lower local.lr)" when a sum is
// not finite at an epoch's end, or for a step that returns the wrong number of values, or a
// LibTorch failure.
Result<LossMeans> run_loss_epochs(const Dataset& data, const LocalTrainOptions& options,
                                  bool drop_last, torch::Device device, Rng& rng,
                                  const std::vector<std::string>& names, const std::string& what,
                                  const LossStepFn& step);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_LOSS_EPOCHS_H_
