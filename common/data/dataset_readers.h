// Dataset readers: Fashion-MNIST/MNIST IDX files, CIFAR-10/100 binary batches, and load_dataset(),
// which finds a dataset's files from DataOptions and returns one split as a Dataset.
//
// Every reader validates what it reads and returns kCorruption naming the file when the bytes are
// not what the format promises (bad magic, truncated, counts or labels out of range), kNotFound
// when a file is missing. Image folders are read by common/data/image_folder.h. All functions are
// thread-safe (they share no state) and block while reading.
#ifndef FEDTAIL_COMMON_DATA_DATASET_READERS_H_
#define FEDTAIL_COMMON_DATA_DATASET_READERS_H_

#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/data/data_options.h"
#include "common/data/dataset.h"

namespace fedtail {

enum class Split { kTrain, kTest };

// "train" or "test".
const char* split_name(Split split);

// Reads an IDX image file (magic 0x00000803, dims N×H×W, uint8) and an IDX label file (magic
// 0x00000801, dim N, uint8), each gzipped or plain (detected from the first two bytes, 1f 8b).
// Returns N×1×H×W images and labels in [0, num_classes), class_names "0", "1", ...
// kCorruption naming the file on a bad magic, a wrong number of dimensions, a size that does not
// match the dimensions, an image count that differs from the label count, or a label >=
// num_classes. kNotFound when a file cannot be opened.
Result<Dataset> read_idx(const std::string& images_path, const std::string& labels_path,
                         int num_classes);

// Reads CIFAR-10 binary batches: records of 1 label byte (0..9) + 3072 pixel bytes (1024 R, then G,
// then B, each 32×32 row-major), concatenated in the order of `files`. Returns N×3×32×32 images and
// 10 classes (names airplane … truck). kCorruption naming the file when its size is not a multiple
// of 3073 bytes or a label is >= 10; kNotFound for a missing file.
Result<Dataset> read_cifar10_binary(const std::vector<std::string>& files);

// Reads a CIFAR-100 binary file: records of a coarse label byte (0..19), a fine label byte (0..99)
// and 3072 pixel bytes. Uses the fine label: 100 classes (names apple … worm). Errors as above
// (3074-byte records).
Result<Dataset> read_cifar100_binary(const std::string& file);

// The default root of a dataset: "/usr/share/datasets/fashion-mnist" for fashion-mnist, "" for the
// others (they need DataOptions::root).
std::string default_data_root(const std::string& dataset);

// Loads one split of options.dataset from options.root (or its default). Only `dataset` and `root`
// are read; long-tailing and partitioning are common/data/federated_data.h's job.
//  - fashion-mnist: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in root.
//  - cifar10: data_batch_1..5.bin / test_batch.bin in root or root/cifar-10-batches-bin; otherwise
//  an
//    image folder root/train or root/test with 10 class folders.
//  - cifar100: train.bin / test.bin in root or root/cifar-100-binary; otherwise an image folder
//  with
//    100 class folders.
//  - folder: the image folder root/train or root/test. The test split must have the same class
//  folders
//    as the train split.
// Image folders are decoded once and cached (see common/data/image_folder.h).
// kInvalidArgument for an unknown dataset or a missing root; kNotFound when no files are found
// (the message names the paths tried); otherwise the readers' errors.
Result<Dataset> load_dataset(const DataOptions& options, Split split);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_DATASET_READERS_H_
