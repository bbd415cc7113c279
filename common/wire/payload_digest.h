// The digest that protects a TensorBundle on the wire (common/wire/bundle_codec.h): XXH3-128
// (xxHash 0.8, Debian's libxxhash), as its 16-byte canonical (big-endian) form.
//
// Why not SHA-256: the digest guards against corruption and truncation (a broken peer, a bad
// buffer, a torn file), not against an attacker, who could rewrite the digest along with the data
// it travels with; authenticity and tamper-proofing come from TLS. XXH3 detects random corruption
// with probability 1 − 2^-128 and runs at memory speed (~20 GB/s in cache), where SHA-256 managed
// ~1.3 GB/s here and was the largest single cost of sending a model (fedtail-bench
// "serialization"). Join tokens (HMAC-SHA256) and checkpoint digests still use SHA-256.
//
// PayloadHasher objects are not thread-safe; distinct objects may run on distinct threads.
#ifndef FEDTAIL_COMMON_WIRE_PAYLOAD_DIGEST_H_
#define FEDTAIL_COMMON_WIRE_PAYLOAD_DIGEST_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

// xxHash's streaming state, forward-declared so that this header does not pull in xxhash.h.
struct XXH3_state_s;

namespace fedtail {

constexpr size_t kPayloadDigestBytes = 16;
using PayloadDigest = std::array<uint8_t, kPayloadDigestBytes>;

// Incremental XXH3-128: update() any number of times, then finish(). Movable, not copyable.
class PayloadHasher {
 public:
  PayloadHasher();
  ~PayloadHasher();
  PayloadHasher(PayloadHasher&&) noexcept;
  PayloadHasher& operator=(PayloadHasher&&) noexcept;
  PayloadHasher(const PayloadHasher&) = delete;
  PayloadHasher& operator=(const PayloadHasher&) = delete;

  // Appends `size` bytes at `data` (may be null when size is 0).
  void update(const void* data, size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }

  // The digest of everything appended since construction or the last finish(); then resets.
  PayloadDigest finish();

 private:
  struct StateFree {
    void operator()(XXH3_state_s* state) const;
  };
  std::unique_ptr<XXH3_state_s, StateFree> state_;  // null only in a moved-from object
};

// One-shot XXH3-128 of `size` bytes.
PayloadDigest payload_digest_of(const void* data, size_t size);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_WIRE_PAYLOAD_DIGEST_H_
