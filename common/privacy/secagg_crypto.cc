#include "common/privacy/secagg_crypto.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

namespace fedtail::privacy {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr size_t kMaxHkdfBytes = 255 * 32;  // RFC 5869: L <= 255 * HashLen
// apply_mask makes its keystream this many words at a time (64 KiB): small enough to stay in L2,
// large enough that the per-call overhead of EVP_EncryptUpdate does not show.
constexpr size_t kMaskBlockWords = 16384;

const uint8_t* bytes_of(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

PkeyPtr x25519_private(const Key32& secret) {
  PkeyPtr key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret.data(), secret.size()));
  FEDTAIL_CHECK(key != nullptr);
  return key;
}

CipherCtxPtr new_cipher_ctx() {
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  FEDTAIL_CHECK(ctx != nullptr);
  return ctx;
}

void random_bytes(uint8_t* out, size_t n) {
  FEDTAIL_CHECK(n <= INT_MAX);
  FEDTAIL_CHECK(RAND_bytes(out, static_cast<int>(n)) == 1);
}

// Makes the next `n` (<= kMaskBlockWords) words of the stream in `keystream`: CTR mode encrypts the
// zero bytes in place, which leaves the raw keystream.
void next_keystream(EVP_CIPHER_CTX* ctx, uint32_t* keystream, size_t n) {
  const int bytes = static_cast<int>(n * sizeof(uint32_t));
  std::memset(keystream, 0, static_cast<size_t>(bytes));
  auto* buffer = reinterpret_cast<unsigned char*>(keystream);
  int written = 0;
  FEDTAIL_CHECK(EVP_EncryptUpdate(ctx, buffer, &written, buffer, bytes) == 1);
  FEDTAIL_CHECK(written == bytes);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (size_t i = 0; i < n; ++i) keystream[i] = __builtin_bswap32(keystream[i]);
#endif
}

}  // namespace

Key32 random_key() {
  Key32 key;
  random_bytes(key.data(), key.size());
  return key;
}

Key32 public_key_of(const Key32& secret) {
  PkeyPtr key = x25519_private(secret);
  Key32 public_key;
  size_t length = public_key.size();
  FEDTAIL_CHECK(EVP_PKEY_get_raw_public_key(key.get(), public_key.data(), &length) == 1);
  FEDTAIL_CHECK(length == kKeyBytes);
  return public_key;
}

KeyPair generate_key_pair() {
  KeyPair pair;
  pair.secret = random_key();  // X25519 clamps the scalar itself (RFC 7748 section 5)
  pair.public_key = public_key_of(pair.secret);
  return pair;
}

Result<Key32> x25519(const Key32& secret, const Key32& peer_public) {
  PkeyPtr own = x25519_private(secret);
  PkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(),
                                           peer_public.size()));
  FEDTAIL_CHECK(peer != nullptr);
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(own.get(), nullptr));
  FEDTAIL_CHECK(ctx != nullptr);
  FEDTAIL_CHECK(EVP_PKEY_derive_init(ctx.get()) == 1);
  FEDTAIL_CHECK(EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) == 1);
  Key32 shared;
  size_t length = shared.size();
  // OpenSSL fails the derivation itself when the result is all zeros; the explicit check below
  // covers a provider that does not.
  const bool derived = EVP_PKEY_derive(ctx.get(), shared.data(), &length) == 1;
  if (!derived) ERR_clear_error();
  const Key32 zeros{};
  if (!derived || length != kKeyBytes || shared == zeros) {
    return Status::InvalidArgument(
        "x25519: peer public key has low order (all-zero shared secret)");
  }
  return shared;
}

std::string hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info,
                        size_t length) {
  FEDTAIL_CHECK(length >= 1 && length <= kMaxHkdfBytes);
  FEDTAIL_CHECK(ikm.size() <= INT_MAX && salt.size() <= INT_MAX && info.size() <= INT_MAX);
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  FEDTAIL_CHECK(ctx != nullptr);
  FEDTAIL_CHECK(EVP_PKEY_derive_init(ctx.get()) == 1);
  FEDTAIL_CHECK(EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) == 1);
  // An empty salt is left unset: RFC 5869 section 2.2 makes a missing salt HashLen zero bytes,
  // which as an HMAC key is the same as the empty key.
  if (!salt.empty()) {
    FEDTAIL_CHECK(
        EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), bytes_of(salt), static_cast<int>(salt.size())) == 1);
  }
  // OpenSSL refuses a null key pointer even with length 0.
  static const uint8_t kEmpty = 0;
  const uint8_t* ikm_bytes = ikm.empty() ? &kEmpty : bytes_of(ikm);
  FEDTAIL_CHECK(EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), ikm_bytes, static_cast<int>(ikm.size())) ==
                1);
  if (!info.empty()) {
    FEDTAIL_CHECK(
        EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), bytes_of(info), static_cast<int>(info.size())) == 1);
  }
  std::string out(length, '\0');
  size_t out_length = length;
  FEDTAIL_CHECK(EVP_PKEY_derive(ctx.get(), reinterpret_cast<uint8_t*>(out.data()), &out_length) ==
                1);
  FEDTAIL_CHECK(out_length == length);
  return out;
}

Result<Key32> agreed_key(const Key32& secret, const Key32& peer_public, std::string_view purpose) {
  FEDTAIL_ASSIGN_OR_RETURN(const Key32 shared, x25519(secret, peer_public));
  const std::string derived =
      hkdf_sha256(std::string_view(reinterpret_cast<const char*>(shared.data()), shared.size()),
                  /*salt=*/"", /*info=*/purpose, kKeyBytes);
  Key32 key;
  std::memcpy(key.data(), derived.data(), key.size());
  return key;
}

std::string aead_seal(const Key32& key, std::string_view plaintext, std::string_view associated) {
  FEDTAIL_CHECK(plaintext.size() <= INT_MAX - kNonceBytes - kTagBytes);
  FEDTAIL_CHECK(associated.size() <= INT_MAX);
  std::string sealed(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  auto* nonce = reinterpret_cast<uint8_t*>(sealed.data());
  uint8_t* ciphertext = nonce + kNonceBytes;
  uint8_t* tag = ciphertext + plaintext.size();
  random_bytes(nonce, kNonceBytes);

  CipherCtxPtr ctx = new_cipher_ctx();
  FEDTAIL_CHECK(EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) == 1);
  int written = 0;
  if (!associated.empty()) {
    FEDTAIL_CHECK(EVP_EncryptUpdate(ctx.get(), nullptr, &written, bytes_of(associated),
                                    static_cast<int>(associated.size())) == 1);
  }
  if (!plaintext.empty()) {
    FEDTAIL_CHECK(EVP_EncryptUpdate(ctx.get(), ciphertext, &written, bytes_of(plaintext),
                                    static_cast<int>(plaintext.size())) == 1);
    FEDTAIL_CHECK(static_cast<size_t>(written) == plaintext.size());
  }
  FEDTAIL_CHECK(EVP_EncryptFinal_ex(ctx.get(), tag, &written) == 1);
  FEDTAIL_CHECK(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, tag) == 1);
  return sealed;
}

Result<std::string> aead_open(const Key32& key, std::string_view sealed,
                              std::string_view associated) {
  const Status not_authentic = Status::InvalidArgument("aead_open: not authentic");
  if (sealed.size() < kNonceBytes + kTagBytes || sealed.size() > INT_MAX) return not_authentic;
  FEDTAIL_CHECK(associated.size() <= INT_MAX);
  const uint8_t* nonce = bytes_of(sealed);
  const uint8_t* ciphertext = nonce + kNonceBytes;
  const size_t ciphertext_size = sealed.size() - kNonceBytes - kTagBytes;
  // EVP_CTRL_GCM_SET_TAG takes a non-const pointer; copy the tag rather than cast away const.
  uint8_t tag[kTagBytes];
  std::memcpy(tag, ciphertext + ciphertext_size, kTagBytes);

  CipherCtxPtr ctx = new_cipher_ctx();
  FEDTAIL_CHECK(EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) == 1);
  int written = 0;
  if (!associated.empty()) {
    FEDTAIL_CHECK(EVP_DecryptUpdate(ctx.get(), nullptr, &written, bytes_of(associated),
                                    static_cast<int>(associated.size())) == 1);
  }
  std::string plaintext(ciphertext_size, '\0');
  if (ciphertext_size > 0) {
    FEDTAIL_CHECK(EVP_DecryptUpdate(ctx.get(), reinterpret_cast<uint8_t*>(plaintext.data()),
                                    &written, ciphertext, static_cast<int>(ciphertext_size)) == 1);
    FEDTAIL_CHECK(static_cast<size_t>(written) == ciphertext_size);
  }
  FEDTAIL_CHECK(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) == 1);
  if (EVP_DecryptFinal_ex(ctx.get(), nullptr, &written) != 1) {
    ERR_clear_error();
    return not_authentic;
  }
  return plaintext;
}

void apply_mask(const Key32& seed, int sign, uint32_t* words, size_t n) {
  FEDTAIL_CHECK(sign == 1 || sign == -1);
  if (n == 0) return;
  FEDTAIL_CHECK(words != nullptr);
  CipherCtxPtr ctx = new_cipher_ctx();
  const uint8_t zero_iv[16] = {};
  FEDTAIL_CHECK(EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ctr(), nullptr, seed.data(), zero_iv) ==
                1);
  const size_t block = std::min(n, kMaskBlockWords);
  auto keystream = std::make_unique<uint32_t[]>(block);
  for (size_t start = 0; start < n; start += block) {
    const size_t count = std::min(block, n - start);
    next_keystream(ctx.get(), keystream.get(), count);
    uint32_t* out = words + start;
    const uint32_t* ks = keystream.get();
    // Unsigned arithmetic wraps modulo 2^32; two plain loops so that each vectorises.
    if (sign > 0) {
      for (size_t i = 0; i < count; ++i) out[i] += ks[i];
    } else {
      for (size_t i = 0; i < count; ++i) out[i] -= ks[i];
    }
  }
}

}  // namespace fedtail::privacy
