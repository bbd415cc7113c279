#include "common/privacy/secagg_codec.h"

#include <cstring>
#include <set>
#include <utility>

#include "common/security/crypto.h"

namespace fedtail::privacy::secagg_codec {

using nlohmann::json;

Status get_field(const json& obj, const char* key, const std::string& where, const json** out) {
  if (!obj.is_object()) return Status::InvalidArgument(where + ": must be an object");
  auto it = obj.find(key);
  if (it == obj.end()) return Status::InvalidArgument(where + "." + key + ": missing");
  *out = &*it;
  return Status::OK();
}

Status get_string(const json& obj, const char* key, const std::string& where, std::string* out) {
  const json* field = nullptr;
  FEDTAIL_RETURN_IF_ERROR(get_field(obj, key, where, &field));
  if (!field->is_string()) return Status::InvalidArgument(where + "." + key + ": must be a string");
  *out = field->get_ref<const std::string&>();
  return Status::OK();
}

Status get_array(const json& obj, const char* key, const std::string& where, const json** out) {
  FEDTAIL_RETURN_IF_ERROR(get_field(obj, key, where, out));
  if (!(*out)->is_array()) return Status::InvalidArgument(where + "." + key + ": must be an array");
  return Status::OK();
}

Status get_hex(const json& obj, const char* key, const std::string& where, size_t exact,
               size_t max_bytes, std::string* out) {
  std::string hex;
  FEDTAIL_RETURN_IF_ERROR(get_string(obj, key, where, &hex));
  const std::string name = where + "." + key;
  if (hex.size() > 2 * max_bytes) return Status::InvalidArgument(name + ": too long");
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return Status::InvalidArgument(name + ": not lower-case hex");
    }
  }
  Result<std::string> bytes = from_hex(hex);
  if (!bytes.ok()) return bytes.status().with_context(name);
  if (exact != 0 && bytes->size() != exact) {
    return Status::InvalidArgument(name + ": must be " + std::to_string(exact) + " bytes (got " +
                                   std::to_string(bytes->size()) + ")");
  }
  *out = std::move(bytes).value();
  return Status::OK();
}

Status get_key(const json& obj, const char* key, const std::string& where, Key32* out) {
  std::string bytes;
  FEDTAIL_RETURN_IF_ERROR(get_hex(obj, key, where, kKeyBytes, kKeyBytes, &bytes));
  std::memcpy(out->data(), bytes.data(), kKeyBytes);
  return Status::OK();
}

Status get_id_list(const json& obj, const char* key, const std::string& where,
                   std::vector<std::string>* out) {
  const json* arr = nullptr;
  FEDTAIL_RETURN_IF_ERROR(get_array(obj, key, where, &arr));
  std::set<std::string> seen;
  out->clear();
  for (size_t i = 0; i < arr->size(); ++i) {
    const json& e = (*arr)[i];
    const std::string name = where + "." + key + "[" + std::to_string(i) + "]";
    if (!e.is_string()) return Status::InvalidArgument(name + ": must be a string");
    const std::string& id = e.get_ref<const std::string&>();
    if (!seen.insert(id).second) return Status::InvalidArgument(name + ": duplicate id " + id);
    out->push_back(id);
  }
  return Status::OK();
}

bool valid_id(const std::string& id) { return !id.empty() && id.find('|') == std::string::npos; }

namespace {

void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_bytes(std::string* out, const std::string& s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

// Reads little-endian integers and length-prefixed strings; every read checks the bounds.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  bool u32(uint32_t* v) {
    if (s_.size() - pos_ < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) *v |= uint32_t{static_cast<uint8_t>(s_[pos_ + i])} << (8 * i);
    pos_ += 4;
    return true;
  }
  bool u64(uint64_t* v) {
    if (s_.size() - pos_ < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= uint64_t{static_cast<uint8_t>(s_[pos_ + i])} << (8 * i);
    pos_ += 8;
    return true;
  }
  bool bytes(std::string* out) {
    uint32_t len = 0;
    if (!u32(&len) || s_.size() - pos_ < len) return false;
    *out = s_.substr(pos_, len);
    pos_ += len;
    return true;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace

std::string encode_plaintext(const SharePlaintext& p) {
  std::string out;
  put_bytes(&out, p.from);
  put_bytes(&out, p.to);
  put_u64(&out, p.round);
  put_bytes(&out, p.b_share);
  put_bytes(&out, p.s_share);
  return out;
}

Result<SharePlaintext> decode_plaintext(const std::string& bytes) {
  SharePlaintext p;
  Reader r(bytes);
  if (!r.bytes(&p.from) || !r.bytes(&p.to) || !r.u64(&p.round) || !r.bytes(&p.b_share) ||
      !r.bytes(&p.s_share) || !r.done()) {
    return Status::InvalidArgument("share plaintext: malformed");
  }
  return p;
}

std::string associated_data(uint64_t round, const std::string& from, const std::string& to) {
  return "fedtail-secagg|" + std::to_string(round) + "|" + from + "|" + to;
}

Result<Share> decode_key_share(const std::string& bytes) {
  FEDTAIL_ASSIGN_OR_RETURN(Share share, decode_share(bytes));
  if (share.secret_bytes != kKeyBytes || share.x == 0) {
    return Status::InvalidArgument("not a share of a 32-byte secret");
  }
  return share;
}

}  // namespace fedtail::privacy::secagg_codec
