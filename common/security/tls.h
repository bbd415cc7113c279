// Transport security shared by the coordinator and the clients: gRPC credentials from PEM files
// (TLS, mutual TLS, or plaintext where allowed), the loopback test that decides whether plaintext
// is allowed, and the secret file of join tokens (common/security/join_token.h), which authenticate
// clients that have no certificate.
//
// Thread-safe: every function is a pure function of its arguments (and of the files it reads).
#ifndef FEDTAIL_COMMON_SECURITY_TLS_H_
#define FEDTAIL_COMMON_SECURITY_TLS_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/status.h"

namespace grpc {
class ServerCredentials;
class ChannelCredentials;
}  // namespace grpc

namespace fedtail {

// PEM file paths; an empty path means "not used".
struct TlsFiles {
  std::string cert;  // this side's certificate chain
  std::string key;   // this side's private key
  std::string ca;    // the root(s) that the peer's certificate must chain to
};

// Server credentials:
//   cert + key         -> TLS (server certificate only);
//   cert + key + ca    -> mutual TLS: client certificates are required and verified against `ca`;
//   nothing            -> plaintext, only when `insecure_ok` (else kFailedPrecondition).
// kInvalidArgument for an incomplete set (cert without key, key without cert, ca without cert+key);
// kNotFound naming the file when a file does not exist; kIOError when it cannot be read.
Result<std::shared_ptr<grpc::ServerCredentials>> make_server_credentials(const TlsFiles& files,
                                                                         bool insecure_ok);

// Channel (client) credentials:
//   ca                 -> TLS, the server's certificate verified against `ca`;
//   ca + cert + key    -> TLS with a client certificate (for a mutual-TLS coordinator);
//   nothing            -> plaintext, only when `insecure_ok` (else kFailedPrecondition).
// kInvalidArgument for cert without key (or the reverse) or cert+key without ca; kNotFound naming
// the file when a file does not exist; kIOError when it cannot be read.
Result<std::shared_ptr<grpc::ChannelCredentials>> make_channel_credentials(const TlsFiles& files,
                                                                           bool insecure_ok);

// True when `host_port` ("HOST:PORT", "[V6]:PORT", "HOST" or a "dns:///", "ipv4:", "ipv6:" gRPC
// target) names a loopback host: 127.0.0.0/8, ::1, or "localhost". Anything else (including
// 0.0.0.0, [::], names that would need resolving, malformed input) is false.
bool is_loopback_address(const std::string& host_port);

// The shortest join-token secret accepted, in bytes (as read: the HMAC key is the file's text, e.g.
// the 64 hex digits that `fedtail-certs secret` writes).
constexpr size_t kMinTokenSecretBytes = 32;

// Reads a secret file (e.g. --token-secret-file), stripping one trailing newline ("\n" or "\r\n").
// The bytes are the HMAC key as they are (hex is not decoded). kNotFound naming the file when it
// does not exist, kIOError when it cannot be read, kInvalidArgument naming the file when it is
// empty or shorter than kMinTokenSecretBytes.
Result<std::string> read_secret_file(const std::string& path);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_SECURITY_TLS_H_
