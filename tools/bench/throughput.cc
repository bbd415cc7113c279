#include "tools/bench/throughput.h"

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <vector>

#include "common/base/rng.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "common/learning/models.h"

namespace fedtail::bench {
namespace {

void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Runs `step` (which processes `items` items) under `timing`.
Throughput time_steps(const StepTiming& timing, torch::Device device, int64_t items,
                      const std::function<void()>& step) {
  for (int i = 0; i < timing.warmup_steps; ++i) step();
  synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  Throughput m;
  for (;;) {
    step();
    ++m.steps;
    if (m.steps < timing.min_steps) continue;
    synchronize(device);
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (m.seconds >= timing.min_seconds) break;
  }
  m.images_per_s = static_cast<double>(m.steps * items) / m.seconds;
  return m;
}

// Random uint8 images and labels, from the Rng (deterministic inputs across runs).
std::pair<torch::Tensor, torch::Tensor> random_batch(const ModelCase& c, int batch, Rng& rng) {
  std::vector<uint8_t> pixels(static_cast<size_t>(batch) * c.channels * c.size * c.size);
  for (auto& p : pixels) p = static_cast<uint8_t>(rng.uniform_int(256));
  std::vector<int64_t> labels(batch);
  for (auto& l : labels) l = static_cast<int64_t>(rng.uniform_int(c.classes));
  return {torch::tensor(pixels, torch::kUInt8).view({batch, c.channels, c.size, c.size}),
          torch::tensor(labels, torch::kInt64)};
}

}  // namespace

std::string input_name(const ModelCase& c) {
  return std::to_string(c.channels) + "x" + std::to_string(c.size) + "x" + std::to_string(c.size);
}

StepTiming step_timing(bool quick) { return quick ? StepTiming{2, 3, 0.3} : StepTiming{}; }

Result<Throughput> measure_throughput(const ModelCase& c, StepKind kind, int batch, int threads,
                                      const StepTiming& timing, torch::Device device,
                                      const AugmentOptions& augment) {
  set_num_threads(threads);
  ModelOptions o;
  o.arch = c.arch;
  o.in_channels = c.channels;
  o.image_size = c.size;
  o.num_classes = c.classes;
  Rng model_rng = Rng::derive(1, "bench.model");
  FEDTAIL_ASSIGN_OR_RETURN(Model model, make_model(o, model_rng));
  FEDTAIL_ASSIGN_OR_RETURN(Augmenter augmenter, Augmenter::create(augment, c.channels, device));
  Rng rng = Rng::derive(1, "bench.data", {static_cast<uint64_t>(batch)});
  auto [images, labels] = random_batch(c, batch, rng);
  Throughput m;
  try {
    model->to(device);
    labels = labels.to(device);
    if (kind == StepKind::kTrain) {
      model->train();
      torch::optim::SGD sgd(model->parameters(),
                            torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(5e-4));
      m = time_steps(timing, device, batch, [&] {
        auto x = augmenter.train_batch(images, rng);
        sgd.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(model->forward(x), labels);
        loss.backward();
        sgd.step();
      });
    } else {
      model->eval();
      torch::NoGradGuard no_grad;
      m = time_steps(timing, device, batch, [&] {
        auto predictions = model->forward(augmenter.eval_batch(images)).argmax(1);
        (void)predictions;
      });
    }
    for (const auto& p : model->parameters()) m.parameters += p.numel();
  } catch (const c10::Error& e) {
    return Status::Internal(c.arch + ": " + e.what_without_backtrace());
  }
  return m;
}

}  // namespace fedtail::bench
