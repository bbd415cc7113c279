#include "common/wire/payload_digest.h"

#include <gtest/gtest.h>

#include <string>

#include "common/security/crypto.h"

namespace fedtail {
namespace {

std::string hex(const PayloadDigest& d) { return to_hex(d.data(), d.size()); }

// xxHash's own sanity vector (xxhsum's XXH128 test data, length 0, seed 0): high 64 bits
// 0x99AA06D3014798D8, low 64 bits 0x6001C324468D497F, canonical form high first.
TEST(PayloadDigestTest, MatchesXxh3128ReferenceVector) {
  EXPECT_EQ(hex(payload_digest_of(nullptr, 0)), "99aa06d3014798d86001c324468d497f");
  PayloadHasher hasher;
  EXPECT_EQ(hex(hasher.finish()), "99aa06d3014798d86001c324468d497f");
}

TEST(PayloadDigestTest, StreamingEqualsOneShotWhateverTheSplits) {
  std::string data(100'003, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + 7) % 251);
  const PayloadDigest whole = payload_digest_of(data.data(), data.size());
  for (size_t step : {1u, 7u, 64u, 1000u, 65536u}) {
    PayloadHasher hasher;
    for (size_t at = 0; at < data.size(); at += step) {
      hasher.update(data.data() + at, std::min(step, data.size() - at));
    }
    EXPECT_EQ(hasher.finish(), whole) << "step " << step;
  }
}

TEST(PayloadDigestTest, FinishResetsAndOneFlippedBitChangesTheDigest) {
  std::string data(4096, 'x');
  PayloadHasher hasher;
  hasher.update(data);
  const PayloadDigest first = hasher.finish();
  hasher.update(data);
  EXPECT_EQ(hasher.finish(), first);
  data[1234] ^= 0x10;
  EXPECT_NE(payload_digest_of(data.data(), data.size()), first);
}

TEST(PayloadDigestTest, MovedHasherKeepsItsState) {
  PayloadHasher a;
  a.update("ab");
  PayloadHasher b = std::move(a);
  b.update("c");
  EXPECT_EQ(b.finish(), payload_digest_of("abc", 3));
}

}  // namespace
}  // namespace fedtail
