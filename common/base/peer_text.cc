#include "common/base/peer_text.h"

namespace fedtail {
namespace {

bool allowed_id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

}  // namespace

Status validate_client_id(std::string_view id, const std::string& what) {
  if (id.empty()) return Status::InvalidArgument(what + ": must not be empty");
  if (id.size() > kMaxClientIdLength) {
    return Status::InvalidArgument(what + ": longer than " + std::to_string(kMaxClientIdLength) +
                                   " characters (got " + std::to_string(id.size()) + ")");
  }
  for (char c : id) {
    if (!allowed_id_char(c)) {
      return Status::InvalidArgument(what +
                                     ": may hold only letters, digits, '.', '_' and '-' (got "
                                     "other characters)");
    }
  }
  if (id[0] == '.') {
    return Status::InvalidArgument(what + ": must not start with '.' (got \"" + std::string(id) +
                                   "\")");
  }
  return Status::OK();
}

std::string bounded_text(std::string_view text, size_t max_bytes) {
  size_t keep = text.size();
  if (keep > max_bytes) {
    // Do not end inside a UTF-8 sequence: when the first byte cut is a continuation byte
    // (10xxxxxx), back off to (and drop) the lead byte of its sequence.
    keep = max_bytes;
    while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
  }
  std::string out;
  out.reserve(keep + 40);
  for (size_t i = 0; i < keep; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    out.push_back(c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c));
  }
  if (keep < text.size()) {
    out += " [... " + std::to_string(text.size() - keep) + " more bytes cut]";
  }
  return out;
}

}  // namespace fedtail
