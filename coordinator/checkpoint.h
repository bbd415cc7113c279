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
// Checkpoints are authenticated: the bundle's own digests (XXH3) catch corruption, not an
// attacker, who can recompute them. write_checkpoint adds "fedtail_checkpoint_mac", an
// HMAC-SHA256 of the metadata and every tensor under a secret key kept beside the checkpoint
// (checkpoint.key: 32 random bytes, mode 0600, created exclusively at the first write), and
// read_checkpoint refuses a file whose MAC does not match. The state directory is created 0700
// (prepare_state_directory). Every file written here goes through an exclusively created
// temporary file (common/base/temp_file.h), so a symlink or FIFO planted at a temporary name is
// never followed.
//
// Free functions, thread-safe for distinct paths. Errors name the file.
#ifndef FEDTAIL_COORDINATOR_CHECKPOINT_H_
#define FEDTAIL_COORDINATOR_CHECKPOINT_H_

#include <cstddef>
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

inline constexpr char kCheckpointKeyFile[] = "checkpoint.key";

// The metadata key of a checkpoint's own record.
inline constexpr char kCheckpointKey[] = "fedtail_checkpoint";
// The metadata key of a checkpoint's MAC (64 hex characters).
inline constexpr char kCheckpointMacKey[] = "fedtail_checkpoint_mac";
// Bytes of a checkpoint key.
inline constexpr size_t kCheckpointKeyBytes = 32;

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

// Creates the state directory `dir` (parents as needed, with the default mode) with mode 0700. An
// existing `dir` that group or others can access is chmod'ed to 0700 with a warning when this user
// owns it, and only warned about otherwise (spdlog). kIOError naming the directory when it cannot
// be created or is not a directory.
Status prepare_state_directory(const std::string& dir);

// The checkpoint key in directory `dir` (<dir>/checkpoint.key, kCheckpointKeyBytes raw bytes).
// kNotFound when there is none; kFailedPrecondition naming the file and its mode when it is not a
// regular file, is accessible to group/others, or is owned by neither this user nor root;
// kCorruption when its size is wrong; kIOError on OS failures.
Result<std::string> read_checkpoint_key(const std::string& dir);

// Same, but when there is none, creates one: kCheckpointKeyBytes from OpenSSL's RAND_bytes, in a
// file created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (fsynced, with the directory). Errors
// as read_checkpoint_key, or kIOError naming the file.
Result<std::string> load_or_create_checkpoint_key(const std::string& dir);

// Writes `state` plus the record `info` and the MAC under the key of path's directory (created if
// absent: load_or_create_checkpoint_key) to `path` atomically (write_bundle_file, mode 0600).
// kInvalidArgument when state's metadata already has kCheckpointKey or kCheckpointMacKey; the
// key's and write_bundle_file's errors otherwise.
Status write_checkpoint(const std::string& path, const CheckpointInfo& info, TensorBundle state);

// Reads and authenticates a checkpoint. kNotFound when `path` does not exist; read_bundle_file's
// errors; kCorruption naming the file when the MAC is missing, or "<path>: MAC mismatch: the file
// was modified or written with another key" when it does not match; read_checkpoint_key's errors
// (in context "<path>: cannot verify ...") when the key of path's directory cannot be read
// (kNotFound when it is missing); kCorruption naming the file when the record is missing or
// malformed.
Result<Checkpoint> read_checkpoint(const std::string& path);

// Appends `line` (dumped on one line) and a newline to `path` (created if absent, mode 0600; a
// symlink at `path` is refused), then fsyncs.
// kIOError naming the file and the errno text; the file is then cut back to its length before the
// call (no partial line), unless that fails too.
Status append_metrics_line(const std::string& path, const nlohmann::json& line);

// Cuts `path` down to its first `lines` lines (fsynced). OK when it has exactly that many;
// kCorruption when it has fewer (or, with lines > 0, does not exist); kIOError on OS failures.
Status truncate_metrics_lines(const std::string& path, int64_t lines);

// Every line of `path`, parsed. An absent file is empty. kCorruption naming the file and line
// number for a line that is not a JSON object.
Result<std::vector<nlohmann::json>> read_metrics_lines(const std::string& path);

// Writes `text` to `path` atomically (a new temporary file from create_temp_file, mode 0600, fsync,
// rename, fsync of the directory). kIOError naming the file.
Status write_file_atomic(const std::string& path, const std::string& text);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_CHECKPOINT_H_
