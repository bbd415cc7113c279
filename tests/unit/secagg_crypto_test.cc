#include "common/privacy/secagg_crypto.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/security/crypto.h"

namespace fedtail::privacy {
namespace {

std::string unhex(std::string_view hex) {
  Result<std::string> bytes = from_hex(hex);
  EXPECT_TRUE(bytes.ok()) << hex;
  return bytes.ok() ? *bytes : std::string();
}

Key32 key_from_hex(std::string_view hex) {
  const std::string bytes = unhex(hex);
  Key32 key{};
  EXPECT_EQ(bytes.size(), key.size());
  std::memcpy(key.data(), bytes.data(), std::min(bytes.size(), key.size()));
  return key;
}

std::string hex(const Key32& key) { return to_hex(key.data(), key.size()); }

// RFC 7748 section 5.2, the two single-step X25519 test vectors (scalar, u-coordinate, output).
TEST(X25519Test, MatchesRfc7748Section52Vectors) {
  struct Vector {
    const char* scalar;
    const char* u;
    const char* out;
  };
  const Vector vectors[] = {
      {"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
       "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
       "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"},
      {"4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
       "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
       "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"},
  };
  for (const Vector& v : vectors) {
    Result<Key32> out = x25519(key_from_hex(v.scalar), key_from_hex(v.u));
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(hex(*out), v.out);
  }
}

// RFC 7748 section 6.1: Alice and Bob's key pairs and their shared secret K.
TEST(X25519Test, MatchesRfc7748Section61DiffieHellman) {
  const Key32 alice =
      key_from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const Key32 bob =
      key_from_hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  const Key32 alice_public = public_key_of(alice);
  const Key32 bob_public = public_key_of(bob);
  EXPECT_EQ(hex(alice_public), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(hex(bob_public), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const std::string k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  Result<Key32> alice_k = x25519(alice, bob_public);
  Result<Key32> bob_k = x25519(bob, alice_public);
  ASSERT_TRUE(alice_k.ok() && bob_k.ok());
  EXPECT_EQ(hex(*alice_k), k);
  EXPECT_EQ(hex(*bob_k), k);
}

TEST(X25519Test, GeneratedPairsAgreeOnKeysPerPurpose) {
  const KeyPair a = generate_key_pair();
  const KeyPair b = generate_key_pair();
  EXPECT_NE(a.secret, b.secret);
  EXPECT_EQ(a.public_key, public_key_of(a.secret));
  Result<Key32> ab = agreed_key(a.secret, b.public_key, "fedtail secagg mask");
  Result<Key32> ba = agreed_key(b.secret, a.public_key, "fedtail secagg mask");
  Result<Key32> ab_share = agreed_key(a.secret, b.public_key, "fedtail secagg share");
  ASSERT_TRUE(ab.ok() && ba.ok() && ab_share.ok());
  EXPECT_EQ(*ab, *ba);
  EXPECT_NE(*ab, *ab_share);  // one key per purpose
  // agreed_key is HKDF-SHA256(X25519 output, salt = "", info = purpose).
  Result<Key32> shared = x25519(a.secret, b.public_key);
  ASSERT_TRUE(shared.ok());
  const std::string expected =
      hkdf_sha256(std::string(reinterpret_cast<const char*>(shared->data()), shared->size()), "",
                  "fedtail secagg mask", kKeyBytes);
  EXPECT_EQ(to_hex(ab->data(), ab->size()), to_hex(expected));
}

TEST(X25519Test, RefusesLowOrderPeerKey) {
  const KeyPair a = generate_key_pair();
  const Key32 zero{};  // u = 0 has order 1: the shared secret is all zeros (RFC 7748 section 6.1)
  Result<Key32> out = x25519(a.secret, zero);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  Result<Key32> key = agreed_key(a.secret, zero, "fedtail secagg mask");
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), StatusCode::kInvalidArgument);
  // u = 1 is also of small order: a clamped scalar (a multiple of 8) maps it to zero too.
  Key32 one{};
  one[0] = 1;
  EXPECT_FALSE(x25519(a.secret, one).ok());
}

// RFC 5869 Appendix A, test cases 1-3 (SHA-256).
TEST(HkdfTest, MatchesRfc5869Vectors) {
  std::string ikm2, salt2, info2;
  for (int i = 0; i < 80; ++i) {
    ikm2.push_back(static_cast<char>(0x00 + i));   // 0x00..0x4f
    salt2.push_back(static_cast<char>(0x60 + i));  // 0x60..0xaf
    info2.push_back(static_cast<char>(0xb0 + i));  // 0xb0..0xff
  }
  const std::string ikm13(22, '\x0b');
  // A.1: basic test case.
  EXPECT_EQ(to_hex(hkdf_sha256(ikm13, unhex("000102030405060708090a0b0c"),
                               unhex("f0f1f2f3f4f5f6f7f8f9"), 42)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  // A.2: longer inputs and outputs.
  EXPECT_EQ(to_hex(hkdf_sha256(ikm2, salt2, info2, 82)),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87");
  // A.3: zero-length salt and info.
  EXPECT_EQ(to_hex(hkdf_sha256(ikm13, "", "", 42)),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(HkdfTest, ShorterOutputIsAPrefix) {
  const std::string ikm = "input keying material";
  EXPECT_EQ(hkdf_sha256(ikm, "s", "i", 8160).substr(0, 100), hkdf_sha256(ikm, "s", "i", 100));
  EXPECT_EQ(hkdf_sha256(ikm, "s", "i", 1).size(), 1u);
}

TEST(AeadTest, RoundTripsIncludingEmptyInputs) {
  const Key32 key = random_key();
  for (const std::string& plaintext :
       {std::string(), std::string("share bytes"), std::string(1000, '\x5a')}) {
    for (const std::string& associated : {std::string(), std::string("from 3 to 7, round 2")}) {
      const std::string sealed = aead_seal(key, plaintext, associated);
      EXPECT_EQ(sealed.size(), 12 + plaintext.size() + 16);
      Result<std::string> opened = aead_open(key, sealed, associated);
      ASSERT_TRUE(opened.ok()) << opened.status().to_string();
      EXPECT_EQ(*opened, plaintext);
    }
  }
}

TEST(AeadTest, SealsDifferentlyEachTime) {
  const Key32 key = random_key();
  const std::string a = aead_seal(key, "same plaintext", "ad");
  const std::string b = aead_seal(key, "same plaintext", "ad");
  EXPECT_NE(a.substr(0, 12), b.substr(0, 12));  // fresh nonce
  EXPECT_NE(a, b);
}

void expect_not_authentic(const Result<std::string>& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not authentic"), std::string::npos);
}

TEST(AeadTest, RefusesAlteredOrMisattributedInput) {
  const Key32 key = random_key();
  const std::string ad = "from 3 to 7, round 2";
  const std::string sealed = aead_seal(key, "twenty bytes of text", ad);
  ASSERT_EQ(sealed.size(), 12u + 20u + 16u);
  // One flipped bit in the nonce (byte 0), the ciphertext (byte 12 + 5) and the tag (last byte).
  for (size_t at : {size_t{0}, size_t{11}, size_t{17}, size_t{31}, sealed.size() - 1}) {
    std::string altered = sealed;
    altered[at] = static_cast<char>(altered[at] ^ 0x01);
    expect_not_authentic(aead_open(key, altered, ad));
  }
  Key32 wrong = key;
  wrong[31] ^= 0x80;
  expect_not_authentic(aead_open(wrong, sealed, ad));
  expect_not_authentic(aead_open(key, sealed, "from 3 to 7, round 3"));
  expect_not_authentic(aead_open(key, sealed, ""));
  expect_not_authentic(aead_open(key, sealed.substr(0, sealed.size() - 1), ad));
  expect_not_authentic(aead_open(key, sealed.substr(0, 27), ad));  // shorter than nonce + tag
  expect_not_authentic(aead_open(key, "", ad));
}

TEST(ApplyMaskTest, AddThenSubtractRestores) {
  const Key32 seed = random_key();
  // 40000 words cross two 16384-word keystream blocks and end inside a third.
  std::vector<uint32_t> original(40000);
  for (size_t i = 0; i < original.size(); ++i) original[i] = static_cast<uint32_t>(i * 2654435761u);
  std::vector<uint32_t> words = original;
  apply_mask(seed, +1, words.data(), words.size());
  EXPECT_NE(words, original);
  apply_mask(seed, -1, words.data(), words.size());
  EXPECT_EQ(words, original);
  apply_mask(seed, +1, nullptr, 0);  // nothing to do
}

TEST(ApplyMaskTest, ShorterMaskIsAPrefix) {
  const Key32 seed = random_key();
  for (size_t n : {size_t{1}, size_t{3}, size_t{16384}, size_t{20001}}) {
    std::vector<uint32_t> shorter(n, 0), longer(2 * n, 0);
    apply_mask(seed, +1, shorter.data(), n);
    apply_mask(seed, +1, longer.data(), 2 * n);
    EXPECT_TRUE(std::equal(shorter.begin(), shorter.end(), longer.begin())) << "n=" << n;
  }
}

// With a zero IV, AES-256-CTR's keystream block i is AES-256-ECB(key, counter block i), the 128-bit
// big-endian integer i; computed here with EVP directly, independently of apply_mask.
std::vector<uint8_t> ecb_of_counters(const Key32& key, int blocks) {
  std::vector<uint8_t> in(16 * blocks, 0), out(16 * blocks + 16, 0);
  for (int i = 0; i < blocks; ++i) in[16 * i + 15] = static_cast<uint8_t>(i);
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> owner(EVP_CIPHER_CTX_new(),
                                                                        &EVP_CIPHER_CTX_free);
  EVP_CIPHER_CTX* ctx = owner.get();
  int len = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), nullptr, key.data(), nullptr), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_set_padding(ctx, 0), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), static_cast<int>(in.size())), 1);
  EXPECT_EQ(len, 16 * blocks);
  out.resize(16 * blocks);
  return out;
}

TEST(ApplyMaskTest, IsAes256CtrWithZeroIvReadLittleEndian) {
  const Key32 seed =
      key_from_hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
  const std::vector<uint8_t> keystream = ecb_of_counters(seed, 3);
  std::vector<uint32_t> words(12, 0);
  apply_mask(seed, +1, words.data(), words.size());
  for (size_t i = 0; i < words.size(); ++i) {
    const uint8_t* b = &keystream[4 * i];
    const uint32_t expected =
        uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
    EXPECT_EQ(words[i], expected) << "word " << i;
  }
  // Subtracting from zero gives the two's complement: 0 - k = 2^32 - k.
  std::vector<uint32_t> negated(4, 0);
  apply_mask(seed, -1, negated.data(), negated.size());
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(negated[i], 0u - words[i]);
}

TEST(ApplyMaskTest, WordsLookUniform) {
  const Key32 seed = random_key();
  std::vector<uint32_t> words(1 << 20, 0);
  apply_mask(seed, +1, words.data(), words.size());
  double sum = 0;
  for (uint32_t w : words) sum += static_cast<double>(w) / 4294967296.0;
  // Uniform words: the mean of 2^20 draws has standard deviation sqrt(1/12) / 2^10 ~ 2.8e-4.
  EXPECT_NEAR(sum / static_cast<double>(words.size()), 0.5, 0.001);
  // Different seeds give different streams.
  std::vector<uint32_t> other(16, 0);
  apply_mask(random_key(), +1, other.data(), other.size());
  EXPECT_FALSE(std::equal(other.begin(), other.end(), words.begin()));
}

}  // namespace
}  // namespace fedtail::privacy
