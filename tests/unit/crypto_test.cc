#include "common/security/crypto.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace fedtail {
namespace {

TEST(Sha256Test, MatchesFipsVectors) {
  EXPECT_EQ(to_hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(to_hex(sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndResets) {
  const std::string million(1000000, 'a');
  const std::string expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
  EXPECT_EQ(to_hex(sha256(million)), expected);
  Sha256 hasher;
  // Odd piece sizes cross the 64-byte block boundary in every way.
  size_t offset = 0;
  for (size_t piece = 1; offset < million.size(); piece = piece * 3 % 1009 + 1) {
    const size_t n = std::min(piece, million.size() - offset);
    hasher.update(million.data() + offset, n);
    offset += n;
  }
  EXPECT_EQ(to_hex(hasher.finish()), expected);
  // finish() resets: the same object hashes a new message.
  hasher.update("ab");
  hasher.update("c");
  EXPECT_EQ(to_hex(hasher.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  hasher.update("garbage");
  hasher.reset();
  EXPECT_EQ(hasher.finish(), sha256(""));
}

TEST(Sha256Test, MovedHasherKeepsItsState) {
  Sha256 a;
  a.update("ab");
  Sha256 b = std::move(a);
  b.update("c");
  EXPECT_EQ(b.finish(), sha256("abc"));
}

TEST(HmacSha256Test, MatchesRfc4231) {
  // Test case 1.
  EXPECT_EQ(to_hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 2: a key shorter than the block.
  EXPECT_EQ(to_hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 6: a key longer than the block is hashed first.
  EXPECT_EQ(to_hex(hmac_sha256(std::string(131, '\xaa'),
                               "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(HmacSha256Test, EmptyKeyAndMessageWork) {
  EXPECT_EQ(to_hex(hmac_sha256("", "")),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST(HexTest, RoundTripsAndRejectsBadInput) {
  const std::string bytes("\x00\x01\xab\xff", 4);
  EXPECT_EQ(to_hex(bytes), "0001abff");
  Result<std::string> back = from_hex("0001ABff");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, bytes);
  EXPECT_EQ(from_hex("abc").status().code(), StatusCode::kInvalidArgument);
  Result<std::string> bad = from_hex("00zz");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("position 2"), std::string::npos);
}

TEST(ConstantTimeEqualTest, ComparesContentsAndLengths) {
  EXPECT_TRUE(constant_time_equal("token", "token"));
  EXPECT_FALSE(constant_time_equal("token", "tokem"));
  EXPECT_FALSE(constant_time_equal("token", "token2"));
  EXPECT_TRUE(constant_time_equal("", ""));
  const Sha256Digest a = sha256("x");
  Sha256Digest b = a;
  EXPECT_TRUE(constant_time_equal(a.data(), b.data(), a.size()));
  b[31] ^= 1;
  EXPECT_FALSE(constant_time_equal(a.data(), b.data(), a.size()));
}

}  // namespace
}  // namespace fedtail
