#include "common/base/temp_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <random>
#include <system_error>

namespace fedtail {
namespace {

// Tries before giving up on EEXIST: a collision of 64 random bits means someone plants names.
constexpr int kMaxTries = 16;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// 16 hex digits from the OS entropy source. The names are not part of any output, so this is
// not a determinism concern (STYLE rule 11 is about results); O_EXCL, not secrecy, is the
// protection, and unpredictable names only make squatting harder.
std::string random_suffix() {
  thread_local std::random_device device;
  const uint64_t bits = (static_cast<uint64_t>(device()) << 32) ^ device();
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(bits));
  return text;
}

}  // namespace

Result<TempFile> create_temp_file(const std::string& target, mode_t mode) {
  const std::string prefix = target + ".tmp." + std::to_string(::getpid()) + ".";
  std::string path;
  int err = EEXIST;
  for (int attempt = 0; attempt < kMaxTries && err == EEXIST; ++attempt) {
    path = prefix + random_suffix();
    const int fd =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 0777);
    if (fd < 0) {
      err = errno;
      if (err == EINTR) err = EEXIST;  // try again with a new name
      continue;
    }
    // The umask may have removed bits; the file must not have gained any either.
    if (::fchmod(fd, mode & 0777) != 0) {
      err = errno;
      ::close(fd);
      ::unlink(path.c_str());
      return Status::IOError(path + ": chmod: " + errno_text(err));
    }
    return TempFile{fd, path};
  }
  return Status::IOError(path + ": open: " + errno_text(err));
}

}  // namespace fedtail
