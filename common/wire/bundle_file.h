// Bundle files: one TensorBundle on disk (checkpoints, initial models, cached client state).
//
// Format (version 1): the 8-byte magic "FTBUNDL\n", a little-endian uint32 format version, then the
// bundle's wire chunks (common/wire/bundle_codec.h), each as a little-endian uint32 byte length
// followed by the serialized fedtail.v1.BundleChunk. Reading reuses the wire decoder, so a file
// gets the same validation as a peer's upload (specs, sizes, chunk order, XXH3-128 digest of the
// payload).
//
// Both functions are thread-safe; concurrent writers of one path race (the last rename wins; each
// writes its own temporary file).
#ifndef FEDTAIL_COMMON_WIRE_BUNDLE_FILE_H_
#define FEDTAIL_COMMON_WIRE_BUNDLE_FILE_H_

#include <cstdint>
#include <string>

#include "common/base/status.h"
#include "common/wire/bundle_codec.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail {

// Current bundle file format version.
constexpr uint32_t kBundleFileVersion = 1;

// Writes `bundle` to `path` atomically: to a new temporary file beside it (create_temp_file:
// "<path>.tmp.<pid>.<random>", O_EXCL|O_NOFOLLOW, mode 0600), fsync, rename over `path`, fsync the
// directory. The file ends up with mode 0600. On success the file is durable; on any failure `path`
// is untouched (an old file stays
// as it was), the temporary file is removed, and the result is kIOError naming the path, the failed
// step and the errno text (e.g. "No space left on device"). Blocks for the disk.
Status write_bundle_file(const std::string& path, const TensorBundle& bundle);

// Reads a bundle file. kNotFound when `path` does not exist; kIOError for other read failures;
// kCorruption naming the path for a bad magic, an unknown version, a truncated or overlong file
// (bytes after the last chunk), or anything the wire decoder rejects (see BundleDecoder); limits as
// in `limits`.
Result<TensorBundle> read_bundle_file(const std::string& path, const DecodeLimits& limits = {});

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_BUNDLE_FILE_H_
