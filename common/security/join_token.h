// Join tokens: what a client without a certificate presents to join a federation. A token binds
// a client id to one federation (the coordinator's --federation) until an expiry time:
//
//   ft1.<federation>.<expires_unix_s>.<mac>
//   mac = lower-case hex HMAC-SHA256(secret, "ft1|" + federation + "|" + expires + "|" + client_id)
//
// The federation is 1-64 characters of [A-Za-z0-9._-] (it may hold dots); the expiry is decimal
// Unix seconds without leading zeros; the mac is 64 hex digits. A token is parsed from the right
// (mac, then expiry: neither holds a dot), so the split is unambiguous, and the MAC is compared in
// constant time. The client id is not in the token: the coordinator checks the token against the
// id the client claims. Tokens of earlier releases (plain hex HMAC of the client id, no expiry)
// are refused.
//
// Thread-safe: every function is a pure function of its arguments.
#ifndef FEDTAIL_COMMON_SECURITY_JOIN_TOKEN_H_
#define FEDTAIL_COMMON_SECURITY_JOIN_TOKEN_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace fedtail {

// The federation of a coordinator and of the tokens it accepts, unless --federation says otherwise.
constexpr char kDefaultFederation[] = "fedtail";
constexpr size_t kMaxFederationNameBytes = 64;

// OK when `name` is 1-64 characters of [A-Za-z0-9._-]; else kInvalidArgument naming `what` (a
// flag, e.g. "--federation").
Status validate_federation_name(std::string_view name, const std::string& what);

// The join token of `client_id` in `federation` until `expires_unix_s` (Unix seconds, >= 0),
// under `secret`. `federation` must pass validate_federation_name (checked: aborts otherwise).
std::string make_join_token(std::string_view secret, std::string_view client_id,
                            std::string_view federation, int64_t expires_unix_s);

// The fields of a token, as parse_join_token reads them (nothing is verified but the syntax).
struct ParsedJoinToken {
  std::string federation;
  int64_t expires_unix_s = 0;
  std::string expires_text;  // the expiry as written in the token (what the MAC covers)
  std::string mac_hex;       // 64 hex digits, lower-cased
};

// Splits a token. kInvalidArgument, with a reason that never repeats the token, when it is not an
// ft1 token: "not a fedtail token (ft1.*)", or, for a plain 64-hex-digit token of an earlier
// release, a message that says how to issue a new one.
Result<ParsedJoinToken> parse_join_token(std::string_view token);

// OK when `token` admits `client_id` to `federation` at `now_unix_s`. Otherwise the reason, which
// names the problem but never repeats the token or the secret:
//   kInvalidArgument     not an ft1 token, or a legacy token (see parse_join_token);
//   kFailedPrecondition  "issued for federation \"x\", this coordinator is \"y\"", "bad signature
//                        (...)" (another client id or another secret), "expired at <ISO time>".
// The checks run in that order: the federation named by the token, the MAC, the expiry.
Status check_join_token(std::string_view secret, std::string_view client_id, std::string_view token,
                        std::string_view federation, int64_t now_unix_s);

// `unix_s` as an ISO 8601 UTC time, e.g. "2025-03-01T12:00:00Z".
std::string format_utc_time(int64_t unix_s);

// A duration such as "90s", "45m", "12h" or "30d" (a positive integer and one unit), in seconds.
// kInvalidArgument naming `what` (a flag, e.g. "--expires") otherwise.
Result<int64_t> parse_duration_s(std::string_view text, const std::string& what);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_SECURITY_JOIN_TOKEN_H_
