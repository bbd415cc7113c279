// Hashing and message authentication through OpenSSL's EVP API: SHA-256 (the run config's digest in
// checkpoints, client jitter seeds), HMAC-SHA256 (join tokens), hex encoding and constant-time
// comparison. Bundle payloads use XXH3-128 instead (common/wire/payload_digest.h).
//
// Sha256 objects are not thread-safe; the free functions are. OpenSSL failures inside these calls
// (out of memory in EVP_MD_CTX_new, a broken provider) are treated as bugs: FEDTAIL_CHECK aborts.
#ifndef FEDTAIL_COMMON_SECURITY_CRYPTO_H_
#define FEDTAIL_COMMON_SECURITY_CRYPTO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"

// OpenSSL's digest context, forward-declared so that this header does not pull in OpenSSL.
struct evp_md_ctx_st;

namespace fedtail {

constexpr size_t kSha256Bytes = 32;
using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// Incremental SHA-256: update() any number of times, then finish(). Movable, not copyable.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&& other) noexcept;
  Sha256& operator=(Sha256&& other) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  // Appends `size` bytes at `data` (may be null when size is 0).
  void update(const void* data, size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }

  // Returns the digest of everything appended since construction or the last reset(), then
  // resets, so that the object can hash a new message.
  Sha256Digest finish();

  // Discards everything appended so far.
  void reset();

 private:
  evp_md_ctx_st* ctx_;  // owned; null only in a moved-from object
};

// One-shot SHA-256.
Sha256Digest sha256(const void* data, size_t size);
Sha256Digest sha256(std::string_view data);

// Lower-case hex of `size` bytes: two characters per byte.
std::string to_hex(const void* data, size_t size);
std::string to_hex(const Sha256Digest& digest);
std::string to_hex(std::string_view bytes);
// The bytes of a hex string (either case). kInvalidArgument on an odd length or a non-hex
// character, naming its position.
Result<std::string> from_hex(std::string_view hex);

// HMAC-SHA256 of `message` under `key` (RFC 2104; any key length).
Sha256Digest hmac_sha256(std::string_view key, std::string_view message);

// True when the `size` bytes at a and b are equal, in time independent of their contents.
bool constant_time_equal(const void* a, const void* b, size_t size);
// Same for two strings; strings of different lengths are unequal (the length is not secret).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_SECURITY_CRYPTO_H_
