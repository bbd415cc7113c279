#include "common/learning/train_loop.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <numeric>

#include "common/learning/classification_loss.h"

namespace fedtail {

namespace {

Status torch_error(const char* where, const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return Status::Internal(std::string(where) + ": " + c10->what_without_backtrace());
  }
  return Status::Internal(std::string(where) + ": " + e.what());
}

// Puts a module in eval mode for its lifetime, then restores the previous mode.
class EvalModeGuard {
 public:
  explicit EvalModeGuard(torch::nn::Module& module)
      : module_(module), was_training_(module.is_training()) {
    module_.eval();
  }
  ~EvalModeGuard() { module_.train(was_training_); }
  EvalModeGuard(const EvalModeGuard&) = delete;
  EvalModeGuard& operator=(const EvalModeGuard&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

// Runs `per_batch` over `data` in order, on the evaluation path, under NoGradGuard and eval mode,
// and returns the concatenation of its outputs on the CPU (empty_shape for an empty dataset).
Result<torch::Tensor> map_batches(
    Model& model, const Dataset& data, const AugmentOptions& input, torch::Device device,
    int batch_size, const char* where, torch::IntArrayRef empty_shape,
    torch::ScalarType empty_dtype,
    const std::function<torch::Tensor(const torch::Tensor&)>& per_batch) {
  if (batch_size < 1) {
    return Status::InvalidArgument(std::string(where) + ": batch_size must be >= 1 (got " +
                                   std::to_string(batch_size) + ")");
  }
  if (data.size() == 0) return torch::empty(empty_shape, torch::TensorOptions().dtype(empty_dtype));
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter, Augmenter::create(input, data.channels(), device));
  try {
    model->to(device);
    torch::NoGradGuard no_grad;
    EvalModeGuard eval_mode(*model);
    std::vector<torch::Tensor> outputs;
    BatchOptions batches;
    batches.batch_size = batch_size;
    Status status = for_each_batch(data, batches, augmenter, /*rng=*/nullptr,
                                   [&](const torch::Tensor& x, const torch::Tensor&) -> Status {
                                     // Stays on the device: no sync here.
                                     outputs.push_back(apply_padded(x, per_batch));
                                     return Status::OK();
                                   });
    if (!status.ok()) return status.with_context(where);
    return torch::cat(outputs, /*dim=*/0).to(torch::kCPU);
  } catch (const std::exception& e) {
    return torch_error(where, e);
  }
}

}  // namespace

torch::Tensor apply_padded(const torch::Tensor& x,
                           const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  const int64_t rows = x.size(0);
  if (rows == 0 || rows >= kMinInferenceRows) return fn(x);
  const torch::Tensor last = x.narrow(0, rows - 1, 1);
  std::vector<int64_t> repeats(static_cast<size_t>(x.dim()), 1);
  repeats[0] = kMinInferenceRows - rows;
  return fn(torch::cat({x, last.repeat(repeats)}, /*dim=*/0)).narrow(0, 0, rows);
}

Status for_each_batch(const Dataset& data, const BatchOptions& options, const Augmenter& augmenter,
                      Rng* rng, const BatchFn& fn) {
  if (options.batch_size < 1) {
    return Status::InvalidArgument("for_each_batch: batch_size must be >= 1 (got " +
                                   std::to_string(options.batch_size) + ")");
  }
  if ((options.shuffle || options.augment) && rng == nullptr) {
    return Status::InvalidArgument("for_each_batch: shuffle and augment need an Rng");
  }
  const int64_t n = data.size();
  if (n == 0) return Status::OK();
  try {
    const torch::Device device = augmenter.device();
    // One host→device copy per call (a no-op on the CPU), then batches are cut on the device.
    const torch::Tensor images = data.images.to(device);
    const torch::Tensor labels = data.labels.to(device);
    torch::Tensor order;
    if (options.shuffle) {
      std::vector<int64_t> permutation(n);
      std::iota(permutation.begin(), permutation.end(), 0);
      rng->shuffle(permutation);
      order = torch::tensor(permutation, torch::kInt64).to(device);
    }
    const int64_t batch_size = options.batch_size;
    int64_t batches = 0;
    for (int64_t start = 0; start < n; start += batch_size) {
      const int64_t end = std::min(n, start + batch_size);
      if (options.drop_last && start > 0 && end - start < batch_size) break;
      torch::Tensor x, y;
      if (options.shuffle) {
        auto index = order.slice(/*dim=*/0, start, end);
        x = images.index_select(0, index);
        y = labels.index_select(0, index);
      } else {
        x = images.slice(/*dim=*/0, start, end);
        y = labels.slice(/*dim=*/0, start, end);
      }
      x = options.augment ? augmenter.train_batch(x, *rng) : augmenter.eval_batch(x);
      FEDTAIL_RETURN_IF_ERROR(fn(x, y));
      if (options.max_batches > 0 && ++batches >= options.max_batches) break;
    }
  } catch (const std::exception& e) {
    return torch_error("for_each_batch", e);
  }
  return Status::OK();
}

Result<TrainStats> train_local(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng,
                               const std::vector<int64_t>& global_counts) {
  Model m = model;  // the holder shares the module; the lambda must not capture a reference
  if (options.loss.kind == LocalLossOptions::Kind::kCrossEntropy) {
    return train_local(model, data, options, device, rng,
                       [m](const torch::Tensor& x, const torch::Tensor& y) mutable {
                         return torch::nn::functional::cross_entropy(m->forward(x), y);
                       });
  }
  FEDTAIL_ASSIGN_OR_RETURN(ClassificationLoss loss,
                           ClassificationLoss::create(options.loss, model->num_classes(),
                                                      data.class_counts(), global_counts, device));
  return train_local(model, data, options, device, rng,
                     [m, loss](const torch::Tensor& x, const torch::Tensor& y) mutable {
                       return loss(m->forward(x), y);
                     });
}

Result<TrainStats> train_local(Model& model, const Dataset& data, const LocalTrainOptions& options,
                               torch::Device device, Rng& rng, const LossFn& loss_fn) {
  const auto start = std::chrono::steady_clock::now();
  if (data.size() == 0) return Status::FailedPrecondition("train_local: the dataset is empty");
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter,
                           Augmenter::create(options.augment, data.channels(), device));
  TrainStats stats;
  try {
    model->to(device);
    model->train();
    std::vector<torch::Tensor> trainable;
    for (const auto& p : model->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    torch::optim::SGD optimizer(trainable, torch::optim::SGDOptions(options.lr)
                                               .momentum(options.momentum)
                                               .weight_decay(options.weight_decay));
    BatchOptions batches;
    batches.batch_size = options.batch_size;
    batches.shuffle = true;
    batches.augment = true;
    double total_loss = 0;
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      if (options.max_steps > 0) {
        if (stats.steps >= options.max_steps) break;
        batches.max_batches = options.max_steps - stats.steps;
      }
      // Summed on the device; read once per epoch (one sync instead of one per batch).
      auto loss_sum =
          torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
      int64_t epoch_examples = 0;
      Status status = for_each_batch(data, batches, augmenter, &rng,
                                     [&](const torch::Tensor& x, const torch::Tensor& y) -> Status {
                                       optimizer.zero_grad();
                                       torch::Tensor loss = loss_fn(x, y);
                                       loss.backward();
                                       optimizer.step();
                                       loss_sum.add_(loss.detach(), /*alpha=*/x.size(0));
                                       epoch_examples += x.size(0);
                                       ++stats.steps;
                                       return Status::OK();
                                     });
      if (!status.ok()) return status.with_context("train_local");
      const double sum = loss_sum.item<double>();
      if (!std::isfinite(sum)) {
        return Status::Internal("train_local: the loss is not finite in epoch " +
                                std::to_string(epoch + 1) + " (try a lower local.lr)");
      }
      stats.epoch_loss.push_back(sum / static_cast<double>(epoch_examples));
      stats.examples += epoch_examples;
      total_loss += sum;
    }
    stats.mean_loss = total_loss / static_cast<double>(stats.examples);
  } catch (const std::exception& e) {
    return torch_error("train_local", e);
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

Result<torch::Tensor> predict_logits(Model& model, const Dataset& data, const LogitsFn& logits_fn,
                                     const AugmentOptions& input, torch::Device device,
                                     int batch_size) {
  Model m = model;
  return map_batches(model, data, input, device, batch_size, "predict_logits", {0, 0},
                     torch::kFloat32,
                     [&](const torch::Tensor& x) { return logits_fn(m->features(x)); });
}

Result<torch::Tensor> predict_with(Model& model, const Dataset& data, const LogitsFn& logits_fn,
                                   const AugmentOptions& input, torch::Device device,
                                   int batch_size) {
  Model m = model;
  return map_batches(
      model, data, input, device, batch_size, "predict", {0}, torch::kInt64,
      [&](const torch::Tensor& x) { return logits_fn(m->features(x)).argmax(/*dim=*/1); });
}

Result<torch::Tensor> predict(Model& model, const Dataset& data, const AugmentOptions& input,
                              torch::Device device, int batch_size, const std::string& head) {
  if (!model->has_head(head)) {
    return Status::InvalidArgument("predict: the model has no head \"" + head + "\"");
  }
  torch::nn::Linear linear = model->head(head);
  return predict_with(
      model, data, [linear](const torch::Tensor& f) mutable { return linear->forward(f); }, input,
      device, batch_size);
}

Result<torch::Tensor> extract_features(Model& model, const Dataset& data,
                                       const AugmentOptions& input, torch::Device device,
                                       int batch_size) {
  Model m = model;
  return map_batches(model, data, input, device, batch_size, "extract_features",
                     {0, model->feature_dim()}, torch::kFloat32,
                     [&](const torch::Tensor& x) { return m->features(x); });
}

Result<AccuracyReport> evaluate_accuracy(Model& model, const Dataset& data,
                                         const ClassGroups& groups, const AugmentOptions& input,
                                         torch::Device device, int batch_size,
                                         const std::string& head) {
  FEDTAIL_ASSIGN_OR_RETURN(torch::Tensor predictions,
                           predict(model, data, input, device, batch_size, head));
  const torch::Tensor labels = data.size() > 0 ? data.labels : torch::empty({0}, torch::kInt64);
  return accuracy_report(predictions, labels, data.num_classes, groups);
}

}  // namespace fedtail
