// Exclusively created temporary files, for writers that replace a file atomically (write the
// temporary file, fsync, rename it over the target).
//
// A fixed temporary name ("<target>.tmp") lets anyone who can write to the directory plant a
// symlink, FIFO or directory there ahead of the writer: the writer then follows the symlink
// (overwriting another file with our data), blocks in open(), or fails. create_temp_file never
// opens an existing entry: each name carries the pid and a random suffix, and the open uses
// O_CREAT|O_EXCL|O_NOFOLLOW, so a name that is taken (by anything) is skipped.
//
// Thread-safe.
#ifndef FEDTAIL_COMMON_BASE_TEMP_FILE_H_
#define FEDTAIL_COMMON_BASE_TEMP_FILE_H_

#include <sys/types.h>

#include <string>

#include "common/base/status.h"

namespace fedtail {

// A newly created, empty temporary file open for writing. The caller owns `fd` (close it) and
// the file (rename it over the target, or unlink it on failure).
struct TempFile {
  int fd = -1;
  std::string path;  // "<target>.tmp.<pid>.<16 hex digits>", in the target's directory
};

// Creates a new file beside `target` with O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC and
// permissions exactly `mode` (fchmod'ed, so the umask can only have been stricter before the
// rename). A name that already exists is skipped for a fresh random one (a few tries). kIOError
// naming the temporary path and the errno text when the file cannot be created.
Result<TempFile> create_temp_file(const std::string& target, mode_t mode = 0600);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_BASE_TEMP_FILE_H_
