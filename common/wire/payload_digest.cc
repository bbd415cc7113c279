#include "common/wire/payload_digest.h"

#include <xxhash.h>

#include <cstring>

#include "common/base/status.h"

namespace fedtail {
namespace {

PayloadDigest canonical(XXH128_hash_t hash) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, hash);
  PayloadDigest out;
  static_assert(sizeof(c.digest) == kPayloadDigestBytes);
  std::memcpy(out.data(), c.digest, out.size());
  return out;
}

}  // namespace

void PayloadHasher::StateFree::operator()(XXH3_state_s* state) const { XXH3_freeState(state); }

PayloadHasher::PayloadHasher() : state_(XXH3_createState()) {
  FEDTAIL_CHECK(state_ != nullptr);
  FEDTAIL_CHECK(XXH3_128bits_reset(state_.get()) == XXH_OK);
}

PayloadHasher::~PayloadHasher() = default;
PayloadHasher::PayloadHasher(PayloadHasher&&) noexcept = default;
PayloadHasher& PayloadHasher::operator=(PayloadHasher&&) noexcept = default;

void PayloadHasher::update(const void* data, size_t size) {
  FEDTAIL_CHECK(state_ != nullptr);
  if (size == 0) return;
  FEDTAIL_CHECK(XXH3_128bits_update(state_.get(), data, size) == XXH_OK);
}

PayloadDigest PayloadHasher::finish() {
  FEDTAIL_CHECK(state_ != nullptr);
  const PayloadDigest digest = canonical(XXH3_128bits_digest(state_.get()));
  FEDTAIL_CHECK(XXH3_128bits_reset(state_.get()) == XXH_OK);
  return digest;
}

PayloadDigest payload_digest_of(const void* data, size_t size) {
  return canonical(XXH3_128bits(size == 0 ? "" : data, size));
}

}  // namespace fedtail
