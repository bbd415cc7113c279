#include "common/privacy/shamir.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/security/crypto.h"

namespace fedtail::privacy {
namespace {

constexpr uint64_t kP = kShamirPrime;

std::string test_secret(size_t length) {
  std::string s;
  for (size_t i = 0; i < length; ++i) s.push_back(static_cast<char>(i * 37 + 11));
  return s;
}

void expect_invalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status.to_string();
}

TEST(ShamirFieldTest, MatchesHandComputedValues) {
  EXPECT_EQ(kP, 2305843009213693951u);           // 2^61 - 1
  EXPECT_EQ(field_add(kP - 1, 1), 0u);           // p - 1 + 1 = p = 0
  EXPECT_EQ(field_add(kP - 1, kP - 1), kP - 2);  // 2p - 2 = p - 2
  EXPECT_EQ(field_sub(0, 1), kP - 1);            // -1
  EXPECT_EQ(field_sub(7, 5), 2u);
  EXPECT_EQ(field_mul(kP - 1, kP - 1), 1u);                        // (-1)(-1) = 1
  EXPECT_EQ(field_mul(uint64_t{1} << 60, 2), 1u);                  // 2^61 = 1 (mod p)
  EXPECT_EQ(field_mul(uint64_t{1} << 31, uint64_t{1} << 31), 2u);  // 2^62 = 2
  EXPECT_EQ(field_mul(uint64_t{1} << 60, uint64_t{1} << 60), uint64_t{1} << 59);  // 2^120 = 2^59
  EXPECT_EQ(field_mul(123456789, 1000), 123456789000u);                           // no reduction
  EXPECT_EQ(field_inverse(1), 1u);
  EXPECT_EQ(field_inverse(2), uint64_t{1} << 60);  // 2 * 2^60 = 2^61 = 1
  EXPECT_EQ(field_inverse(kP - 1), kP - 1);        // -1 is its own inverse
}

TEST(ShamirFieldTest, InverseTimesValueIsOne) {
  uint64_t a = 0x0123456789abcdefu % kP;
  for (int i = 0; i < 200; ++i) {
    a = field_add(field_mul(a, 6364136223846793005u % kP), 1442695040888963407u % kP);
    if (a == 0) continue;
    EXPECT_EQ(field_mul(a, field_inverse(a)), 1u) << a;
  }
}

// The secret chunk s = 5 shared with the polynomial f(x) = 5 + 3x (threshold 2): f(1) = 8,
// f(2) = 11, f(3) = 14. Lagrange at 0 from x = 2, 3: 3/(3-2) * 11 + 2/(2-3) * 14 = 33 - 28 = 5.
TEST(ShamirCombineTest, RecoversHandMadeShares) {
  const Share s1{1, {8}, 1}, s2{2, {11}, 1}, s3{3, {14}, 1};
  for (const std::vector<Share>& pair :
       {std::vector<Share>{s1, s2}, std::vector<Share>{s2, s3}, std::vector<Share>{s3, s1}}) {
    Result<std::string> secret = shamir_combine(pair, /*threshold=*/2);
    ASSERT_TRUE(secret.ok()) << secret.status().to_string();
    EXPECT_EQ(*secret, std::string(1, '\x05'));
  }
  // Only the first `threshold` shares are used: a third, inconsistent one does not matter.
  const Share wrong{4, {1000}, 1};
  Result<std::string> secret = shamir_combine({s1, s3, wrong}, /*threshold=*/2);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(*secret, std::string(1, '\x05'));
}

// With threshold 1 the polynomial is the constant chunk, so every share holds the chunks
// themselves: 7 bytes each, little-endian.
TEST(ShamirSplitTest, ChunksAreSevenBytesLittleEndian) {
  Result<std::vector<Share>> shares = shamir_split("\x01\x02\x03\x04\x05\x06\x07\x08", 1, 3);
  ASSERT_TRUE(shares.ok());
  ASSERT_EQ(shares->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*shares)[i].x, i + 1);
    EXPECT_EQ((*shares)[i].secret_bytes, 8u);
    EXPECT_EQ((*shares)[i].values, (std::vector<uint64_t>{0x07060504030201u, 0x08u}));
  }
}

TEST(ShamirSplitTest, RoundTripsEveryLengthAndThreshold) {
  const int n = 6;
  for (size_t length : {0, 1, 6, 7, 8, 32, 100}) {
    const std::string secret = test_secret(length);
    for (int t = 1; t <= n; ++t) {
      Result<std::vector<Share>> shares = shamir_split(secret, t, n);
      ASSERT_TRUE(shares.ok()) << shares.status().to_string();
      for (const Share& share : *shares) {
        EXPECT_EQ(share.values.size(), (length + 6) / 7);
        for (uint64_t v : share.values) EXPECT_LT(v, kP);
      }
      // The last t shares, in reverse order.
      std::vector<Share> subset(shares->rbegin(), shares->rbegin() + t);
      Result<std::string> back = shamir_combine(subset, t);
      ASSERT_TRUE(back.ok()) << back.status().to_string();
      EXPECT_EQ(*back, secret) << "length " << length << " t " << t;
    }
  }
}

TEST(ShamirSplitTest, AnyThresholdSubsetRecovers) {
  const std::string secret = test_secret(32);
  const int n = 6, t = 3;
  Result<std::vector<Share>> shares = shamir_split(secret, t, n);
  ASSERT_TRUE(shares.ok());
  int subsets = 0;
  for (int a = 0; a < n; ++a) {
    for (int b = a + 1; b < n; ++b) {
      for (int c = b + 1; c < n; ++c) {
        Result<std::string> back = shamir_combine({(*shares)[c], (*shares)[a], (*shares)[b]}, t);
        ASSERT_TRUE(back.ok());
        EXPECT_EQ(*back, secret);
        ++subsets;
      }
    }
  }
  EXPECT_EQ(subsets, 20);  // C(6, 3)
}

TEST(ShamirSplitTest, FewerThanThresholdSharesDoNotRecover) {
  const std::string secret = test_secret(32);
  Result<std::vector<Share>> shares = shamir_split(secret, 3, 5);
  ASSERT_TRUE(shares.ok());
  const std::vector<Share> two = {(*shares)[0], (*shares)[4]};
  expect_invalid(shamir_combine(two, 3).status(), "fewer than the threshold");
  // Interpolating 2 shares as if t were 2 gives a random field element per chunk: it decodes to
  // the secret with probability about 2^-61 per chunk; almost always it does not even fit 7 bytes.
  Result<std::string> guess = shamir_combine(two, 2);
  EXPECT_TRUE(!guess.ok() || *guess != secret);
  // Two fresh splits of one secret differ (random coefficients).
  Result<std::vector<Share>> again = shamir_split(secret, 3, 5);
  ASSERT_TRUE(again.ok());
  EXPECT_NE((*again)[0].values, (*shares)[0].values);
}

TEST(ShamirSplitTest, RefusesBadParameters) {
  expect_invalid(shamir_split("s", 0, 3).status(), "threshold");
  expect_invalid(shamir_split("s", 4, 3).status(), "threshold");
  expect_invalid(shamir_split("s", 1, 256).status(), "num_shares");
  EXPECT_TRUE(shamir_split("s", 255, 255).ok());
}

TEST(ShamirCombineTest, RefusesMalformedShares) {
  const Share s1{1, {8}, 1}, s2{2, {11}, 1};
  expect_invalid(shamir_combine({s1, s1}, 2).status(), "duplicate x");
  expect_invalid(shamir_combine({Share{0, {5}, 1}, s2}, 2).status(), "x must be");
  expect_invalid(shamir_combine({s1, Share{2, {kP}, 1}}, 2).status(), ">= p");
  expect_invalid(shamir_combine({s1, Share{2, {11}, 2}}, 2).status(), "secret length");
  expect_invalid(shamir_combine({s1, Share{2, {11, 3}, 1}}, 2).status(), "values, expected");
  expect_invalid(shamir_combine({s1, s2}, 0).status(), "threshold");
  expect_invalid(shamir_combine({}, 1).status(), "fewer than the threshold");
  // A 1-byte secret whose chunk interpolates to 256 (9 bits): not from shamir_split.
  expect_invalid(shamir_combine({Share{1, {256}, 1}}, 1).status(), "more than 1 bytes");
  // A full chunk holds at most 56 bits.
  expect_invalid(shamir_combine({Share{1, {uint64_t{1} << 56}, 7}}, 1).status(), "more than 7");
  // Every share given is checked, not only the first `threshold`.
  expect_invalid(shamir_combine({s1, s2, Share{2, {1}, 1}}, 2).status(), "duplicate x");
}

// x = 3, secret_bytes = 2 (02 00 00 00), one value 0x0201 as 8 little-endian bytes.
TEST(ShareCodecTest, EncodesHandComputedBytes) {
  const Share share{3, {0x0201}, 2};
  EXPECT_EQ(to_hex(encode_share(share)),
            "03"
            "02000000"
            "0102000000000000");
}

TEST(ShareCodecTest, RoundTripsSplitShares) {
  Result<std::vector<Share>> shares = shamir_split(test_secret(100), 4, 7);
  ASSERT_TRUE(shares.ok());
  for (const Share& share : *shares) {
    const std::string bytes = encode_share(share);
    EXPECT_EQ(bytes.size(), 5u + 8u * 15u);  // ceil(100 / 7) = 15 values
    Result<Share> back = decode_share(bytes);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->x, share.x);
    EXPECT_EQ(back->secret_bytes, share.secret_bytes);
    EXPECT_EQ(back->values, share.values);
  }
  Result<Share> empty = decode_share(encode_share(Share{9, {}, 0}));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->x, 9);
  EXPECT_TRUE(empty->values.empty());
}

TEST(ShareCodecTest, RefusesTruncatedOrOutOfRangeBytes) {
  const std::string bytes = encode_share(Share{3, {0x0201, 7}, 9});
  ASSERT_EQ(bytes.size(), 21u);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_EQ(decode_share(bytes.substr(0, cut)).status().code(), StatusCode::kInvalidArgument)
        << cut;
  }
  expect_invalid(decode_share(bytes + '\0').status(), "expected 21");
  // The second value set to p = 0x1fffffffffffffff (little-endian ff .. ff 1f).
  std::string too_big = bytes.substr(0, 13) + std::string(7, '\xff') + "\x1f";
  expect_invalid(decode_share(too_big).status(), ">= p");
}

}  // namespace
}  // namespace fedtail::privacy
