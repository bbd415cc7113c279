#include "tools/bench/pytorch_section.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/base/subprocess.h"
#include "common/learning/device.h"
#include "tools/bench/scratch.h"
#include "tools/bench/throughput.h"

#ifndef FEDTAIL_SOURCE_DIR
#define FEDTAIL_SOURCE_DIR "."
#endif

namespace fedtail::bench {
namespace {

namespace fs = std::filesystem;

struct Step {
  StepKind kind;
  int batch;
};

// The comparison: small-batch training (where per-call overhead shows), the usual
// training batch, and evaluation at a large batch.
const std::vector<Step>& steps() {
  static const std::vector<Step> kSteps = {
      {StepKind::kTrain, 8}, {StepKind::kTrain, 32}, {StepKind::kEval, 512}};
  return kSteps;
}

const char* mode_name(StepKind kind) { return kind == StepKind::kTrain ? "train" : "eval"; }

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

struct Reference {
  std::string python;
  std::string script;
  fs::path work_dir;
};

// Runs `argv` to completion with its output in `log`; returns the output, or kInternal naming
// the command with the output's tail when it fails.
Result<std::string> run_to_end(const std::vector<std::string>& argv, const fs::path& log) {
  SubprocessOptions options;
  options.argv = argv;
  options.log_path = log.string();
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> child, Subprocess::spawn(options));
  const int code = child->wait();
  std::string output = read_text(log);
  if (code != 0) {
    return Status::Internal(argv[0] + " " + (argv.size() > 1 ? argv[1] : "") + ": " +
                            child->describe_exit() + ": " + tail(output));
  }
  return output;
}

// The JSON objects the script printed, one per line (other lines ignored).
std::vector<nlohmann::json> json_lines(const std::string& output) {
  std::vector<nlohmann::json> out;
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string line = output.substr(start, end - start);
    if (!line.empty() && line.front() == '{') {
      Result<nlohmann::json> parsed = parse_json_text(line);
      if (parsed.ok() && parsed->is_object()) out.push_back(*parsed);
    }
    start = end + 1;
  }
  return out;
}

// PyTorch's figure for one case, or an error.
Result<nlohmann::json> reference_figure(const Reference& ref, const ModelCase& c, const Step& step,
                                        int threads, const StepTiming& timing) {
  std::vector<std::string> argv = {ref.python,      ref.script,
                                   "--arch",        c.arch,
                                   "--channels",    std::to_string(c.channels),
                                   "--size",        std::to_string(c.size),
                                   "--classes",     std::to_string(c.classes),
                                   "--batch",       std::to_string(step.batch),
                                   "--threads",     std::to_string(threads),
                                   "--mode",        mode_name(step.kind),
                                   "--warmup",      std::to_string(timing.warmup_steps),
                                   "--min-steps",   std::to_string(timing.min_steps),
                                   "--min-seconds", std::to_string(timing.min_seconds)};
  FEDTAIL_ASSIGN_OR_RETURN(std::string output, run_to_end(argv, ref.work_dir / "pytorch.log"));
  std::vector<nlohmann::json> lines = json_lines(output);
  for (const nlohmann::json& line : lines) {
    if (line.value("images_per_s", 0.0) > 0 && line.contains("parameters")) return line;
  }
  return Status::Internal(ref.script + " printed no measurement: " + output.substr(0, 2000));
}

// The reference script: the installed copy when this binary runs from an installed prefix
// (<prefix>/bin/fedtail-bench -> <prefix>/share/fedtail/bench/), else the source tree's.
std::string default_reference_script() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed =
        self.parent_path().parent_path() / "share/fedtail/bench/pytorch_reference.py";
    if (fs::exists(installed, ec)) return installed.string();
  }
  return std::string(FEDTAIL_SOURCE_DIR) + "/tools/bench/pytorch_reference.py";
}

}  // namespace

Result<nlohmann::json> run_pytorch(const BenchContext& ctx) {
  nlohmann::json section = {{"rows", nlohmann::json::array()}};
  if (!ctx.device.is_cpu()) {
    section["skipped"] = "the PyTorch reference runs on the CPU only";
    return section;
  }
  Reference ref;
  ref.python = env_or("FEDTAIL_PYTHON", "/usr/bin/python3");
  ref.script = env_or("FEDTAIL_PYTORCH_REFERENCE", default_reference_script());
  FEDTAIL_ASSIGN_OR_RETURN(ScratchDir scratch, ScratchDir::create("pytorch"));
  ref.work_dir = scratch.path();

  if (!fs::exists(ref.script)) {
    section["skipped"] = ref.script + " not found (set FEDTAIL_PYTORCH_REFERENCE)";
    return section;
  }
  Result<std::string> probe = run_to_end(
      {ref.python, "-c", "import torch; print(torch.__version__)"}, ref.work_dir / "probe.log");
  if (!probe.ok()) {
    section["skipped"] = ref.python +
                         " cannot import torch (Debian: apt-get install python3-torch; or set "
                         "FEDTAIL_PYTHON)";
    spdlog::warn("pytorch section skipped: {}", section["skipped"].get<std::string>());
    return section;
  }
  std::string version = *probe;
  while (!version.empty() && (version.back() == '\n' || version.back() == '\r')) version.pop_back();
  section["pytorch_version"] = version;

  std::vector<ModelCase> cases = {{"cnn", 1, 28, 10}, {"resnet8", 3, 32, 10}};
  if (!ctx.models.empty()) {
    cases.clear();
    for (const std::string& m : ctx.models) {
      cases.push_back(m == "cnn" ? ModelCase{"cnn", 1, 28, 10} : ModelCase{m, 3, 32, 10});
    }
  }
  const StepTiming timing = step_timing(ctx.quick);
  const int all_threads = ctx.thread_counts.empty() ? 1 : ctx.thread_counts.back();
  for (const ModelCase& c : cases) {
    for (const Step& step : steps()) {
      for (int threads : ctx.thread_counts) {
        FEDTAIL_ASSIGN_OR_RETURN(Throughput ours, measure_throughput(c, step.kind, step.batch,
                                                                     threads, timing, ctx.device));
        FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json theirs,
                                 reference_figure(ref, c, step, threads, timing));
        if (theirs.value("parameters", int64_t{-1}) != ours.parameters) {
          return Status::Internal(c.arch + ": the PyTorch reference has " +
                                  theirs["parameters"].dump() + " parameters, fedtail " +
                                  std::to_string(ours.parameters) +
                                  ": the two model definitions differ");
        }
        const double pytorch = theirs["images_per_s"].get<double>();
        const double ratio = ours.images_per_s / pytorch;
        spdlog::info(
            "pytorch: {} {} batch {} threads {}: fedtail {:.1f}, PyTorch {:.1f} images/s "
            "({:.2f}x)",
            c.arch, mode_name(step.kind), step.batch, threads, ours.images_per_s, pytorch, ratio);
        section["rows"].push_back({{"model", c.arch},
                                   {"input", input_name(c)},
                                   {"mode", mode_name(step.kind)},
                                   {"batch", step.batch},
                                   {"threads", threads},
                                   {"fedtail_images_per_s", ours.images_per_s},
                                   {"pytorch_images_per_s", pytorch},
                                   {"ratio", ratio}});
        if (threads == all_threads) {
          section["ratio_" + c.arch + "_" + mode_name(step.kind) + "_b" +
                  std::to_string(step.batch)] = ratio;
        }
      }
    }
  }
  set_num_threads(0);
  return section;
}

}  // namespace fedtail::bench
