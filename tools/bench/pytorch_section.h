// fedtail-bench's "pytorch" section: fedtail's images/s beside PyTorch's (Python) for the same
// work, measured in the same run.
//
// For each model (default cnn on 1x28x28 and resnet8 on 3x32x32; --models picks others) and each
// thread count of the run (1 and all cores), fedtail measures a training step at batch 8 and 32
// and an evaluation pass at batch 512 (tools/bench/throughput.h), then runs
// tools/bench/pytorch_reference.py, which defines the same architecture in Python and times the
// same step (same augmentation, loss, optimiser settings, batch and threads). Rows: {"model",
// "input", "mode", "batch", "threads", "fedtail_images_per_s", "pytorch_images_per_s", "ratio"}
// (ratio = fedtail / PyTorch; > 1: fedtail is faster). The reference's parameter count must
// equal fedtail's, or the section fails (the two would not be the same model). Summary:
// ratio_<model>_<mode>_b<batch> at all cores, e.g. ratio_resnet8_train_b8.
//
// The interpreter is $FEDTAIL_PYTHON, else /usr/bin/python3 (Debian's python3-torch installs
// torch for it); the script is $FEDTAIL_PYTORCH_REFERENCE, else the one in the source tree this
// binary was built from. When the interpreter cannot import torch, the section returns no rows
// and "skipped" says why.
#ifndef FEDTAIL_TOOLS_BENCH_PYTORCH_SECTION_H_
#define FEDTAIL_TOOLS_BENCH_PYTORCH_SECTION_H_

#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "tools/bench/bench_context.h"

namespace fedtail::bench {

// Errors: those of measure_throughput; kInternal with the script's output when it fails or its
// parameter count differs from fedtail's.
Result<nlohmann::json> run_pytorch(const BenchContext& ctx);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_PYTORCH_SECTION_H_
