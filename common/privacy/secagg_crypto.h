// The cryptographic primitives of secure aggregation (common/privacy/secagg.h), all from OpenSSL's
// EVP API except Shamir's secret sharing (common/privacy/shamir.h):
//   - X25519 key agreement (RFC 7748): each client's two key pairs, for the authenticated
//     encryption of the shares it sends (c) and for its pairwise masks (s);
//   - HKDF-SHA256 (RFC 5869): 32-byte keys from the raw X25519 outputs, one per purpose ("info");
//   - AES-256-GCM: the shares a client sends to a neighbour through the coordinator, with the
//     sender, the recipient and the round as associated data;
//   - a mask PRG: AES-256-CTR with a zero IV, keyed by a 32-byte seed, read as little-endian
//     uint32 words and added to (or subtracted from) a vector modulo 2^32.
//
// Keys come from the operating system's CSPRNG (RAND_bytes), never from the run seed: masks must
// be unpredictable to the coordinator. The aggregate that unmasking yields does not depend on them,
// so runs stay reproducible.
//
// Thread-safe (no shared state). An OpenSSL failure that is not the caller's input (out of memory,
// a broken provider) aborts (FEDTAIL_CHECK), as in common/security/crypto.h.
#ifndef FEDTAIL_COMMON_PRIVACY_SECAGG_CRYPTO_H_
#define FEDTAIL_COMMON_PRIVACY_SECAGG_CRYPTO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fedtail::privacy {

constexpr size_t kKeyBytes = 32;  // X25519 keys, HKDF outputs, AES-256 keys, mask seeds
using Key32 = std::array<uint8_t, kKeyBytes>;

struct KeyPair {
  Key32 secret;
  Key32 public_key;
};

// A fresh X25519 key pair from the OS CSPRNG.
KeyPair generate_key_pair();
// The public key of `secret` (RFC 7748 X25519(secret, 9)).
Key32 public_key_of(const Key32& secret);
// X25519(secret, peer_public), the raw shared secret. kInvalidArgument when the result is all
// zeros (a low-order peer key: RFC 7748 section 6.1).
Result<Key32> x25519(const Key32& secret, const Key32& peer_public);
// HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info`: `length` bytes (1..8160).
std::string hkdf_sha256(std::string_view ikm, std::string_view salt, std::string_view info,
                        size_t length);
// The 32-byte key for `purpose` ("fedtail secagg share" / "fedtail secagg mask") agreed between
// `secret` and `peer_public`: HKDF-SHA256(x25519(secret, peer_public), salt = "", info = purpose).
// Both sides of a pair get the same key. Errors as x25519.
Result<Key32> agreed_key(const Key32& secret, const Key32& peer_public, std::string_view purpose);

// A fresh random 32-byte value (mask seeds) from the OS CSPRNG.
Key32 random_key();

// AES-256-GCM with a random 12-byte nonce: returns nonce || ciphertext || 16-byte tag.
std::string aead_seal(const Key32& key, std::string_view plaintext, std::string_view associated);
// The inverse; kInvalidArgument ("not authentic") when `sealed` is shorter than nonce + tag, or
// was not sealed under `key` with `associated`, or was altered.
Result<std::string> aead_open(const Key32& key, std::string_view sealed,
                              std::string_view associated);

// Adds (sign = +1) or subtracts (sign = -1) the mask stream of `seed` to the `n` words at `words`,
// modulo 2^32: words[i] += sign * prg(seed)[i]. The stream is AES-256-CTR(key = seed, IV = 0) over
// zero bytes, read as little-endian uint32; word i does not depend on n (a prefix is a prefix).
void apply_mask(const Key32& seed, int sign, uint32_t* words, size_t n);

}  // namespace fedtail::privacy

#endif  // FEDTAIL_COMMON_PRIVACY_SECAGG_CRYPTO_H_
