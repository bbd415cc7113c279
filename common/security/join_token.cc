#include "common/security/join_token.h"

#include <cctype>
#include <ctime>

#include "common/security/crypto.h"

namespace fedtail {
namespace {

constexpr std::string_view kPrefix = "ft1.";
constexpr size_t kMacHexDigits = 2 * kSha256Bytes;
// Enough for any Unix time of the next few billion years, and small enough never to overflow.
constexpr size_t kMaxExpiryDigits = 18;

constexpr char kNotAToken[] = "not a fedtail token (ft1.*)";

bool is_hex(std::string_view text) {
  for (char c : text) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool is_federation_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

// The MAC input: "|" cannot occur in the federation or the expiry, and the client id comes last,
// so that distinct (federation, expiry, client id) triples never give the same message.
std::string mac_hex(std::string_view secret, std::string_view federation,
                    std::string_view expires_text, std::string_view client_id) {
  std::string message = "ft1|";
  message.append(federation).append("|").append(expires_text).append("|").append(client_id);
  return to_hex(hmac_sha256(secret, message));
}

}  // namespace

Status validate_federation_name(std::string_view name, const std::string& what) {
  if (name.empty() || name.size() > kMaxFederationNameBytes) {
    return Status::InvalidArgument(what + ": a federation name has 1 to " +
                                   std::to_string(kMaxFederationNameBytes) + " characters (got " +
                                   std::to_string(name.size()) + ")");
  }
  for (char c : name) {
    if (!is_federation_char(c)) {
      return Status::InvalidArgument(
          what + ": a federation name may hold only letters, digits, '.', '_' and '-'");
    }
  }
  return Status::OK();
}

std::string make_join_token(std::string_view secret, std::string_view client_id,
                            std::string_view federation, int64_t expires_unix_s) {
  FEDTAIL_CHECK(validate_federation_name(federation, "federation").ok());
  FEDTAIL_CHECK(expires_unix_s >= 0);
  const std::string expires = std::to_string(expires_unix_s);
  std::string token(kPrefix);
  token.append(federation).append(".").append(expires).append(".");
  token += mac_hex(secret, federation, expires, client_id);
  return token;
}

Result<ParsedJoinToken> parse_join_token(std::string_view token) {
  if (token.substr(0, kPrefix.size()) != kPrefix) {
    if (token.size() == kMacHexDigits && is_hex(token)) {
      return Status::InvalidArgument(
          "a join token of an earlier fedtail release (plain HMAC, it never expires); issue a new "
          "one with `fedtail-certs token --secret-file F --client-id ID --expires 30d "
          "--federation NAME`");
    }
    return Status::InvalidArgument(kNotAToken);
  }
  // Parse from the right: neither the MAC nor the expiry holds a dot, the federation may.
  std::string_view rest = token.substr(kPrefix.size());
  const size_t mac_dot = rest.rfind('.');
  if (mac_dot == std::string_view::npos) return Status::InvalidArgument(kNotAToken);
  const std::string_view mac = rest.substr(mac_dot + 1);
  rest = rest.substr(0, mac_dot);
  const size_t expires_dot = rest.rfind('.');
  if (expires_dot == std::string_view::npos) return Status::InvalidArgument(kNotAToken);
  const std::string_view expires = rest.substr(expires_dot + 1);
  const std::string_view federation = rest.substr(0, expires_dot);

  if (mac.size() != kMacHexDigits || !is_hex(mac)) {
    return Status::InvalidArgument("malformed ft1 token: the signature is not 64 hex digits");
  }
  if (expires.empty() || expires.size() > kMaxExpiryDigits ||
      (expires.size() > 1 && expires[0] == '0')) {
    return Status::InvalidArgument("malformed ft1 token: bad expiry time");
  }
  ParsedJoinToken parsed;
  for (char c : expires) {
    if (c < '0' || c > '9') return Status::InvalidArgument("malformed ft1 token: bad expiry time");
    parsed.expires_unix_s = parsed.expires_unix_s * 10 + (c - '0');
  }
  if (!validate_federation_name(federation, "federation").ok()) {
    return Status::InvalidArgument("malformed ft1 token: bad federation name");
  }
  parsed.federation = std::string(federation);
  parsed.expires_text = std::string(expires);
  parsed.mac_hex = std::string(mac);
  for (char& c : parsed.mac_hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return parsed;
}

Status check_join_token(std::string_view secret, std::string_view client_id, std::string_view token,
                        std::string_view federation, int64_t now_unix_s) {
  FEDTAIL_ASSIGN_OR_RETURN(ParsedJoinToken parsed, parse_join_token(token));
  if (parsed.federation != federation) {
    // Both names are public: the federation is in every token, and it is no secret to clients.
    return Status::FailedPrecondition("issued for federation \"" + parsed.federation +
                                      "\", this coordinator is \"" + std::string(federation) +
                                      "\"");
  }
  const std::string expected = mac_hex(secret, parsed.federation, parsed.expires_text, client_id);
  if (!constant_time_equal(expected, parsed.mac_hex)) {
    return Status::FailedPrecondition(
        "bad signature (issued for another client id, or under another secret)");
  }
  if (now_unix_s >= parsed.expires_unix_s) {
    return Status::FailedPrecondition("expired at " + format_utc_time(parsed.expires_unix_s));
  }
  return Status::OK();
}

std::string format_utc_time(int64_t unix_s) {
  const std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm utc{};
  char text[32];
  if (gmtime_r(&t, &utc) == nullptr ||
      std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc) == 0) {
    return std::to_string(unix_s) + " (Unix seconds)";
  }
  return text;
}

Result<int64_t> parse_duration_s(std::string_view text, const std::string& what) {
  auto bad = [&]() {
    return Status::InvalidArgument(what +
                                   ": expected a positive integer and a unit s, m, h or d "
                                   "(e.g. 30d, 12h), got \"" +
                                   std::string(text) + "\"");
  };
  // At most 9 digits: 999999999d fits an int64 comfortably.
  if (text.size() < 2 || text.size() > 10) return bad();
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return bad();
  }
  int64_t count = 0;
  for (char c : text.substr(0, text.size() - 1)) {
    if (c < '0' || c > '9') return bad();
    count = count * 10 + (c - '0');
  }
  if (count <= 0) return bad();
  return count * unit;
}

}  // namespace fedtail
