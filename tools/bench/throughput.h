// Images/s of one model's local training step and of its evaluation forward pass, as fedtail's
// client runs them: the building block of fedtail-bench's "training", "evaluation", "round" and
// "pytorch" sections.
//
// A training step is Augmenter::train_batch (random crop and flip, normalisation) → zero_grad →
// cross-entropy of the forward pass → backward → SGD step (lr 0.01, momentum 0.9, weight decay
// 5e-4), in train mode. An evaluation step is eval mode, no grad, forward of
// Augmenter::eval_batch, argmax. Inputs are random uint8 images and labels in [0, classes) drawn
// from a fixed seed, so runs see the same data. The model comes from make_model with a fixed seed.
// Warm-up steps are not timed; then steps run until both minimums are reached.
//
// Thread-compatible; set_num_threads() changes LibTorch's process-wide intra-op thread count.
#ifndef FEDTAIL_TOOLS_BENCH_THROUGHPUT_H_
#define FEDTAIL_TOOLS_BENCH_THROUGHPUT_H_

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "common/base/status.h"
#include "common/data/augment.h"

namespace fedtail::bench {

// A model and its input shape.
struct ModelCase {
  std::string arch;  // cnn, resnet8, resnet18, resnet34
  int channels = 3;
  int size = 32;  // height = width
  int classes = 10;
};

// "3x32x32".
std::string input_name(const ModelCase& c);

struct StepTiming {
  int warmup_steps = 5;
  int min_steps = 20;
  double min_seconds = 2.0;
};

// {2, 3, 0.3} for --quick, else the defaults above.
StepTiming step_timing(bool quick);

struct Throughput {
  double images_per_s = 0;
  int64_t steps = 0;
  double seconds = 0;
  int64_t parameters = 0;  // the model's parameter count (to check a reference has the same model)
};

enum class StepKind { kTrain, kEval };

// Measures `kind` steps of `batch` images of model `c` with `threads` LibTorch threads (0 = all
// cores; the count stays set afterwards) on `device`. kInvalidArgument for an unknown
// architecture or bad augmentation options; kInternal for a LibTorch failure (named).
Result<Throughput> measure_throughput(const ModelCase& c, StepKind kind, int batch, int threads,
                                      const StepTiming& timing, torch::Device device,
                                      const AugmentOptions& augment = AugmentOptions{});

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_THROUGHPUT_H_
