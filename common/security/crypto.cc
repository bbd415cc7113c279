#include "common/security/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <climits>
#include <utility>

namespace fedtail {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  FEDTAIL_CHECK(ctx_ != nullptr);
  reset();
}

Sha256::~Sha256() {
  if (ctx_ != nullptr) EVP_MD_CTX_free(ctx_);
}

Sha256::Sha256(Sha256&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}

Sha256& Sha256::operator=(Sha256&& other) noexcept {
  if (this != &other) {
    if (ctx_ != nullptr) EVP_MD_CTX_free(ctx_);
    ctx_ = std::exchange(other.ctx_, nullptr);
  }
  return *this;
}

void Sha256::reset() {
  FEDTAIL_CHECK(ctx_ != nullptr);
  FEDTAIL_CHECK(EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1);
}

void Sha256::update(const void* data, size_t size) {
  FEDTAIL_CHECK(ctx_ != nullptr);
  if (size == 0) return;
  FEDTAIL_CHECK(EVP_DigestUpdate(ctx_, data, size) == 1);
}

Sha256Digest Sha256::finish() {
  FEDTAIL_CHECK(ctx_ != nullptr);
  Sha256Digest digest;
  unsigned int length = 0;
  FEDTAIL_CHECK(EVP_DigestFinal_ex(ctx_, digest.data(), &length) == 1);
  FEDTAIL_CHECK(length == kSha256Bytes);
  reset();
  return digest;
}

Sha256Digest sha256(const void* data, size_t size) {
  Sha256Digest digest;
  unsigned int length = 0;
  FEDTAIL_CHECK(
      EVP_Digest(size == 0 ? "" : data, size, digest.data(), &length, EVP_sha256(), nullptr) == 1);
  FEDTAIL_CHECK(length == kSha256Bytes);
  return digest;
}

Sha256Digest sha256(std::string_view data) { return sha256(data.data(), data.size()); }

std::string to_hex(const void* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out(2 * size, '0');
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 0xf];
  }
  return out;
}

std::string to_hex(const Sha256Digest& digest) { return to_hex(digest.data(), digest.size()); }

std::string to_hex(std::string_view bytes) { return to_hex(bytes.data(), bytes.size()); }

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return Status::InvalidArgument("hex string has odd length " + std::to_string(hex.size()));
  }
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < hex.size(); ++i) {
    if (hex_value(hex[i]) < 0) {
      return Status::InvalidArgument("hex string: invalid character at position " +
                                     std::to_string(i));
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<char>(hex_value(hex[2 * i]) << 4 | hex_value(hex[2 * i + 1]));
  }
  return out;
}

Sha256Digest hmac_sha256(std::string_view key, std::string_view message) {
  Sha256Digest digest;
  unsigned int length = 0;
  FEDTAIL_CHECK(key.size() <= static_cast<size_t>(INT_MAX));
  // HMAC() rejects a null key pointer even with length 0.
  static const unsigned char kEmpty = 0;
  const void* key_ptr = key.empty() ? &kEmpty : static_cast<const void*>(key.data());
  const auto* msg_ptr =
      reinterpret_cast<const unsigned char*>(message.empty() ? "" : message.data());
  FEDTAIL_CHECK(HMAC(EVP_sha256(), key_ptr, static_cast<int>(key.size()), msg_ptr, message.size(),
                     digest.data(), &length) != nullptr);
  FEDTAIL_CHECK(length == kSha256Bytes);
  return digest;
}

bool constant_time_equal(const void* a, const void* b, size_t size) {
  if (size == 0) return true;
  return CRYPTO_memcmp(a, b, size) == 0;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return constant_time_equal(a.data(), b.data(), a.size());
}

}  // namespace fedtail
