// Dataset: an in-memory labelled image set, the unit every reader produces and every trainer
// consumes.
//
// Images are uint8 N×C×H×W on the CPU (the format of every source file, 4× smaller than float);
// training converts a batch at a time. Labels are int64 in [0, num_classes). A Dataset is a value:
// copies share tensor storage (LibTorch semantics), so treat the tensors as immutable.
#ifndef FEDTAIL_COMMON_DATA_DATASET_H_
#define FEDTAIL_COMMON_DATA_DATASET_H_

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fedtail {

struct Dataset {
  torch::Tensor images;  // uint8, N×C×H×W, contiguous, CPU
  torch::Tensor labels;  // int64, N, CPU
  int num_classes = 0;
  std::vector<std::string> class_names;  // size num_classes

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }

  // Number of examples of each class (size num_classes).
  std::vector<int64_t> class_counts() const;
  // The examples at `indices` (any order; repeats allowed), as a new contiguous Dataset.
  Dataset subset(const std::vector<int64_t>& indices) const;
  // Labels as a plain vector.
  std::vector<int64_t> label_vector() const;
};

// Per-channel statistics of pixel/255 over a whole Dataset (e.g. for input normalisation).
struct ChannelStats {
  std::vector<double> mean;  // size C
  std::vector<double> std;   // size C; population standard deviation (divides by N·H·W)
};

// Computes ChannelStats exactly (integer sums over the uint8 pixels, a batch of images at a time).
// An empty dataset gives empty vectors.
ChannelStats channel_stats(const Dataset& dataset);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_DATASET_H_
