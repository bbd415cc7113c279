// Internal to secagg.cc and secagg_server.cc: the SecAgg+ messages' field readers (JSON that never
// throws), the sealed share's plaintext encoding and the shared constants. Not a public API.
//
// The readers return kInvalidArgument naming the field ("<where>.<key>: ...") for a missing field,
// a wrong JSON type, or bad hex; they never throw. Thread-safe (no state).
#ifndef FEDTAIL_COMMON_PRIVACY_SECAGG_CODEC_H_
#define FEDTAIL_COMMON_PRIVACY_SECAGG_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/privacy/secagg_crypto.h"
#include "common/privacy/shamir.h"

namespace fedtail::privacy::secagg_codec {

inline constexpr const char* kShareInfo = "fedtail secagg share";  // HKDF info of the share keys
inline constexpr const char* kMaskInfo = "fedtail secagg mask";    // HKDF info of the mask seeds
// Shamir shares carry their x in one byte (1..255): a neighbourhood holds at most 255 clients.
inline constexpr size_t kMaxNeighbours = 255;
// Any hex blob we accept (sealed shares, revealed shares) is at most this many bytes: a sealed
// share holds two ids, a round and two encoded 32-byte shares, far below it.
inline constexpr size_t kMaxBlobBytes = 64 * 1024;
inline constexpr size_t kNonceAndTagBytes = 12 + 16;  // AES-GCM overhead of aead_seal

// *out points into `obj` (valid while obj lives). Errors when obj is not an object or lacks key.
Status get_field(const nlohmann::json& obj, const char* key, const std::string& where,
                 const nlohmann::json** out);
Status get_string(const nlohmann::json& obj, const char* key, const std::string& where,
                  std::string* out);
Status get_array(const nlohmann::json& obj, const char* key, const std::string& where,
                 const nlohmann::json** out);
// Lower-case hex, decoded: exactly `exact` bytes when exact != 0, at most `max_bytes`.
Status get_hex(const nlohmann::json& obj, const char* key, const std::string& where, size_t exact,
               size_t max_bytes, std::string* out);
// 32 bytes of lower-case hex.
Status get_key(const nlohmann::json& obj, const char* key, const std::string& where, Key32* out);
// An array of distinct strings.
Status get_id_list(const nlohmann::json& obj, const char* key, const std::string& where,
                   std::vector<std::string>* out);

// Ids are bound into '|'-separated associated data and commitments: an empty id or one with '|'
// is refused so that those stay unambiguous.
bool valid_id(const std::string& id);

// The sealed share's plaintext: u32-length-prefixed `from`, `to`, then round (u64), then
// u32-length-prefixed encode_share(b) and encode_share(s_sk); integers little-endian.
struct SharePlaintext {
  std::string from;
  std::string to;
  uint64_t round = 0;
  std::string b_share;  // encode_share() bytes
  std::string s_share;
};
std::string encode_plaintext(const SharePlaintext& p);
// kInvalidArgument unless `bytes` is exactly one encoded plaintext.
Result<SharePlaintext> decode_plaintext(const std::string& bytes);

// "fedtail-secagg|<round>|<from>|<to>": the AES-GCM associated data of a sealed share.
std::string associated_data(uint64_t round, const std::string& from, const std::string& to);

// decode_share(bytes), refused (kInvalidArgument) unless it is a share of a 32-byte secret.
Result<Share> decode_key_share(const std::string& bytes);

// The sign with which `self` adds its pairwise mask with `other`: +1 when self < other.
inline int sign_of(const std::string& self, const std::string& other) {
  return self < other ? 1 : -1;
}

inline std::string key_bytes(const Key32& k) {
  return std::string(reinterpret_cast<const char*>(k.data()), k.size());
}

}  // namespace fedtail::privacy::secagg_codec

#endif  // FEDTAIL_COMMON_PRIVACY_SECAGG_CODEC_H_
