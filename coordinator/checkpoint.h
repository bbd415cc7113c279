// Checkpoints and the metrics log of a coordinator's state directory.
//
// After every round the coordinator (1) appends the round's metrics line to metrics.jsonl and
// fsyncs it, then (2) writes checkpoint.bundle atomically: the strategy's save_state bundle with
// one extra metadata key, "fedtail_checkpoint" = {round, run_id, config_sha256, metrics_lines,
// wall_seconds, strategy}. A crash between (1) and (2) leaves one line too many in metrics.jsonl;
// --resume truncates the file to the recorded count and re-runs that round, so the log always
// matches the state. Every random choice is derived from (seed, round), so this is all a resumed
// run needs to continue exactly.
//
// Free functions, thread-safe for distinct paths. Errors name the file.
#ifndef FEDTAIL_COORDINATOR_CHECKPOINT_H_
#define FEDTAIL_COORDINATOR_CHECKPOINT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::coordinator {

// File names inside a state directory.
inline constexpr char kCheckpointFile[] = "checkpoint.bundle";
inline constexpr char kMetricsFile[] = "metrics.jsonl";
inline constexpr char kFinalModelFile[] = "final_model.bundle";
inline constexpr char kSummaryFile[] = "summary.json";
inline constexpr char kPortFile[] = "port";

// The metadata key of a checkpoint's own record.
inline constexpr char kCheckpointKey[] = "fedtail_checkpoint";

struct CheckpointInfo {
  int round = 0;              // the last completed round (>= 1)
  std::string run_id;         // the run's id, kept across resumes
  std::string config_sha256;  // config_digest() of the run's config
  int64_t metrics_lines = 0;  // lines of metrics.jsonl that belong to rounds <= round
  double wall_seconds = 0;    // run time so far, summed over resumed runs
  std::string strategy;       // the strategy's registered name

  nlohmann::json to_json() const;
  // kCorruption naming the field when `json` is not a valid record.
  static Result<CheckpointInfo> from_json(const nlohmann::json& json);
};

struct Checkpoint {
  CheckpointInfo info;
  TensorBundle state;  // exactly the bundle save_state returned (the record key removed)
};

// Hex SHA-256 of the canonical dump of `config` (keys sorted): what a resume must match.
std::string config_digest(const nlohmann::json& config);

// Writes `state` plus the record `info` to `path` atomically (write_bundle_file). kInvalidArgument
// when state's metadata already has kCheckpointKey; write_bundle_file's errors otherwise.
Status write_checkpoint(const std::string& path, const CheckpointInfo& info, TensorBundle state);

// Reads a checkpoint. kNotFound when `path` does not exist; read_bundle_file's errors; kCorruption
// naming the file when the record is missing or malformed.
Result<Checkpoint> read_checkpoint(const std::string& path);

// Appends `line` (dumped on one line) and a newline to `path` (created if absent), then fsyncs.
// kIOError naming the file and the errno text; the file is then cut back to its length before the
// call (no partial line), unless that fails too.
Status append_metrics_line(const std::string& path, const nlohmann::json& line);

// Cuts `path` down to its first `lines` lines (fsynced). OK when it has exactly that many;
// kCorruption when it has fewer (or, with lines > 0, does not exist); kIOError on OS failures.
Status truncate_metrics_lines(const std::string& path, int64_t lines);

// Every line of `path`, parsed. An absent file is empty. kCorruption naming the file and line
// number for a line that is not a JSON object.
Result<std::vector<nlohmann::json>> read_metrics_lines(const std::string& path);

// Writes `text` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
Status write_file_atomic(const std::string& path, const std::string& text);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_CHECKPOINT_H_
