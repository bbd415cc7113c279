// Files for fedtail-bench's sections that run other processes: a scratch directory removed when
// the section ends, and reading back what those processes wrote.
#ifndef FEDTAIL_TOOLS_BENCH_SCRATCH_H_
#define FEDTAIL_TOOLS_BENCH_SCRATCH_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "common/base/status.h"

namespace fedtail::bench {

// The whole file as text; "" when it cannot be read.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The last `bytes` of `text` (a log's tail for an error message).
inline std::string tail(const std::string& text, size_t bytes = 2000) {
  return text.size() <= bytes ? text : text.substr(text.size() - bytes);
}

// $TMPDIR/fedtail-bench-<tag>.<pid>, created by create() and removed with everything in it when
// the object goes. Not copyable.
class ScratchDir {
 public:
  // kIOError naming the directory when it cannot be created.
  static Result<ScratchDir> create(const std::string& tag) {
    ScratchDir dir(std::filesystem::temp_directory_path() /
                   ("fedtail-bench-" + tag + "." + std::to_string(::getpid())));
    std::error_code ec;
    std::filesystem::create_directories(dir.path_, ec);
    if (ec) return Status::IOError(dir.path_.string() + ": " + ec.message());
    return dir;
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(ScratchDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  ScratchDir& operator=(ScratchDir&&) = delete;
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  explicit ScratchDir(std::filesystem::path path) : path_(std::move(path)) {}
  std::filesystem::path path_;
};

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_SCRATCH_H_
