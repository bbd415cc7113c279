#include "common/learning/loss_epochs.h"

#include <torch/torch.h>

#include <cmath>
#include <exception>
#include <utility>

#include "common/data/augment.h"
#include "common/learning/torch_status.h"
#include "common/learning/train_loop.h"

namespace fedtail {

Result<LossMeans> run_loss_epochs(const Dataset& data, const LocalTrainOptions& options,
                                  bool drop_last, torch::Device device, Rng& rng,
                                  const std::vector<std::string>& names, const std::string& what,
                                  const LossStepFn& step) {
  if (data.size() == 0) return Status::FailedPrecondition(what + ": the dataset is empty");
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter,
                           Augmenter::create(options.augment, data.channels(), device));
  const int64_t num_values = static_cast<int64_t>(names.size());
  LossMeans out;
  try {
    BatchOptions batches;
    batches.batch_size = options.batch_size;
    batches.shuffle = true;
    batches.augment = true;
    batches.drop_last = drop_last;
    // Σ batch · value for each value, on the device; read once per epoch.
    torch::Tensor sums =
        torch::zeros({num_values}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      if (options.max_steps > 0) {
        if (out.steps >= options.max_steps) break;
        batches.max_batches = options.max_steps - out.steps;
      }
      Status status = for_each_batch(
          data, batches, augmenter, &rng,
          [&](const torch::Tensor& x, const torch::Tensor& y) -> Status {
            FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor values, step(x, y));
            if (values.dim() != 1 || values.size(0) != num_values) {
              return Status::Internal("the step returned " + std::to_string(values.numel()) +
                                      " values, expected " + std::to_string(num_values));
            }
            sums.add_(values.to(torch::kFloat64), /*alpha=*/x.size(0));
            out.examples += x.size(0);
            ++out.steps;
            return Status::OK();
          });
      if (!status.ok()) return status.with_context(what);
      const torch::Tensor host = sums.to(torch::kCPU);
      for (int64_t i = 0; i < num_values; ++i) {
        if (!std::isfinite(host[i].item<double>())) {
          return Status::Internal(what + ": the loss " + names[static_cast<size_t>(i)] +
                                  " is not finite in epoch " + std::to_string(epoch + 1) +
                                  " (try a lower local.lr)");
        }
      }
    }
    const torch::Tensor host = sums.to(torch::kCPU);
    const double n = static_cast<double>(std::max<int64_t>(out.examples, 1));
    for (int64_t i = 0; i < num_values; ++i) out.means.push_back(host[i].item<double>() / n);
  } catch (const std::exception& e) {
    return torch_failure(what, e);
  }
  return out;
}

}  // namespace fedtail
