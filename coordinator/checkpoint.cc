#include "coordinator/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/security/crypto.h"
#include "common/wire/bundle_file.h"

namespace fedtail::coordinator {
namespace {

Status os_error(const std::string& path, const char* step) {
  return Status::IOError(path + ": " + step + " failed: " + std::strerror(errno));
}

// Writes all `size` bytes at `data` to `fd`, retrying on EINTR and short writes.
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

Status fsync_directory_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return os_error(dir, "open");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return os_error(dir, "fsync");
  return Status::OK();
}

}  // namespace

nlohmann::json CheckpointInfo::to_json() const {
  return {{"round", round},
          {"run_id", run_id},
          {"config_sha256", config_sha256},
          {"metrics_lines", metrics_lines},
          {"wall_seconds", wall_seconds},
          {"strategy", strategy}};
}

Result<CheckpointInfo> CheckpointInfo::from_json(const nlohmann::json& json) {
  if (!json.is_object()) return Status::Corruption("checkpoint record: not an object");
  CheckpointInfo info;
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = json.find(key);
    return it == json.end() ? nullptr : &*it;
  };
  const nlohmann::json* round = field("round");
  const nlohmann::json* run_id = field("run_id");
  const nlohmann::json* digest = field("config_sha256");
  const nlohmann::json* lines = field("metrics_lines");
  const nlohmann::json* wall = field("wall_seconds");
  const nlohmann::json* strategy = field("strategy");
  if (!round || !round->is_number_integer() || round->get<int64_t>() < 1) {
    return Status::Corruption("checkpoint record: round: missing or not an integer >= 1");
  }
  if (!run_id || !run_id->is_string()) {
    return Status::Corruption("checkpoint record: run_id: missing or not a string");
  }
  if (!digest || !digest->is_string()) {
    return Status::Corruption("checkpoint record: config_sha256: missing or not a string");
  }
  if (!lines || !lines->is_number_integer() || lines->get<int64_t>() < 0) {
    return Status::Corruption("checkpoint record: metrics_lines: missing or not an integer >= 0");
  }
  if (!wall || !wall->is_number()) {
    return Status::Corruption("checkpoint record: wall_seconds: missing or not a number");
  }
  if (!strategy || !strategy->is_string()) {
    return Status::Corruption("checkpoint record: strategy: missing or not a string");
  }
  info.round = round->get<int>();
  info.run_id = run_id->get<std::string>();
  info.config_sha256 = digest->get<std::string>();
  info.metrics_lines = lines->get<int64_t>();
  info.wall_seconds = wall->get<double>();
  info.strategy = strategy->get<std::string>();
  return info;
}

std::string config_digest(const nlohmann::json& config) { return to_hex(sha256(config.dump())); }

Status write_checkpoint(const std::string& path, const CheckpointInfo& info, TensorBundle state) {
  if (state.metadata().is_object() && state.metadata().contains(kCheckpointKey)) {
    return Status::InvalidArgument(std::string("strategy state: metadata key \"") + kCheckpointKey +
                                   "\" is reserved for the coordinator");
  }
  state.mutable_metadata()[kCheckpointKey] = info.to_json();
  return write_bundle_file(path, state);
}

Result<Checkpoint> read_checkpoint(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, read_bundle_file(path));
  auto record = state.metadata().find(kCheckpointKey);
  if (record == state.metadata().end()) {
    return Status::Corruption(path + ": not a coordinator checkpoint (no \"" +
                              std::string(kCheckpointKey) + "\" record)");
  }
  Result<CheckpointInfo> info = CheckpointInfo::from_json(*record);
  if (!info.ok()) return info.status().with_context(path);
  state.mutable_metadata().erase(kCheckpointKey);
  return Checkpoint{std::move(info).value(), std::move(state)};
}

Status append_metrics_line(const std::string& path, const nlohmann::json& line) {
  // Non-finite numbers dump as null; error_handler::replace keeps odd strings from throwing.
  const std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return os_error(path, "open");
  struct stat before;
  if (::fstat(fd, &before) != 0) {
    Status status = os_error(path, "fstat");
    ::close(fd);
    return status;
  }
  // A failed append (e.g. a short write, then ENOSPC) is cut back off: the file keeps only
  // complete lines, and stays readable by read_metrics_lines without a resume.
  auto fail = [&](const char* step) {
    Status status = os_error(path, step);
    if (::ftruncate(fd, before.st_size) == 0) ::fsync(fd);
    ::close(fd);
    return status;
  };
  if (!write_all(fd, text.data(), text.size())) return fail("write");
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) return os_error(path, "close");
  return Status::OK();
}

Status truncate_metrics_lines(const std::string& path, int64_t lines) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (lines == 0) return Status::OK();
    return Status::Corruption(path + ": missing, but the checkpoint records " +
                              std::to_string(lines) + " metrics line(s)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return os_error(path, "open");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int64_t seen = 0;
  size_t offset = 0;
  while (seen < lines) {
    size_t newline = text.find('\n', offset);
    if (newline == std::string::npos) {
      return Status::Corruption(path + ": has " + std::to_string(seen) +
                                " complete line(s), but the checkpoint records " +
                                std::to_string(lines));
    }
    offset = newline + 1;
    ++seen;
  }
  if (offset == text.size()) return Status::OK();
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return os_error(path, "open");
  if (::ftruncate(fd, static_cast<off_t>(offset)) != 0 || ::fsync(fd) != 0) {
    Status status = os_error(path, "truncate");
    ::close(fd);
    return status;
  }
  ::close(fd);
  return Status::OK();
}

Result<std::vector<nlohmann::json>> read_metrics_lines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return lines;
  std::ifstream in(path);
  if (!in) return os_error(path, "open");
  std::string text;
  int number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (text.empty()) continue;
    nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object()) {
      return Status::Corruption(path + ":" + std::to_string(number) + ": not a JSON object");
    }
    lines.push_back(std::move(line));
  }
  return lines;
}

Status write_file_atomic(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp";
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return os_error(temporary, "open");
  if (!write_all(fd, text.data(), text.size()) || ::fsync(fd) != 0) {
    Status status = os_error(temporary, "write");
    ::close(fd);
    ::unlink(temporary.c_str());
    return status;
  }
  if (::close(fd) != 0) {
    Status status = os_error(temporary, "close");
    ::unlink(temporary.c_str());
    return status;
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    Status status = os_error(path, "rename");
    ::unlink(temporary.c_str());
    return status;
  }
  return fsync_directory_of(path);
}

}  // namespace fedtail::coordinator
