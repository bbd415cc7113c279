#include "common/security/tls.h"

#include <arpa/inet.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fedtail {
namespace {

// Reads a whole PEM (or secret) file. `what` names the flag for the error message.
Result<std::string> read_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return Status::NotFound(std::string(what) + ": file not found: " + path);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError(std::string(what) + ": cannot open " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(std::string(what) + ": cannot read " + path);
  return buffer.str();
}

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

// The host part of a target, without brackets; empty when malformed.
std::string host_of(std::string_view target) {
  // gRPC target schemes: "dns:///host:port", "dns:host:port", "ipv4:host:port", "ipv6:[h]:port".
  for (std::string_view scheme : {"dns:///", "dns:", "ipv4:", "ipv6:"}) {
    if (starts_with(target, scheme)) {
      target.remove_prefix(scheme.size());
      break;
    }
  }
  if (target.empty()) return {};
  if (target.front() == '[') {
    size_t close = target.find(']');
    if (close == std::string_view::npos) return {};
    std::string_view rest = target.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') return {};
    return std::string(target.substr(1, close - 1));
  }
  size_t colons = std::count(target.begin(), target.end(), ':');
  if (colons > 1) return std::string(target);  // a bare IPv6 address, no port
  if (colons == 1) return std::string(target.substr(0, target.find(':')));
  return std::string(target);
}

}  // namespace

Result<std::shared_ptr<grpc::ServerCredentials>> make_server_credentials(const TlsFiles& files,
                                                                         bool insecure_ok) {
  if (files.cert.empty() && files.key.empty() && files.ca.empty()) {
    if (!insecure_ok) {
      return Status::FailedPrecondition(
          "plaintext refused: give --tls-cert and --tls-key, listen on a loopback address, or pass "
          "--insecure");
    }
    return grpc::InsecureServerCredentials();
  }
  if (files.cert.empty() || files.key.empty()) {
    return Status::InvalidArgument(files.cert.empty()
                                       ? "--tls-cert: required with --tls-key / --tls-client-ca"
                                       : "--tls-key: required with --tls-cert");
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::string cert, read_file(files.cert, "--tls-cert"));
  FEDTAIL_ASSIGN_OR_RETURN(std::string key, read_file(files.key, "--tls-key"));
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!files.ca.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(std::string ca, read_file(files.ca, "--tls-client-ca"));
    options.pem_root_certs = std::move(ca);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  options.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::SslServerCredentials(options);
  if (!credentials) return Status::Internal("gRPC refused the server TLS credentials");
  return credentials;
}

Result<std::shared_ptr<grpc::ChannelCredentials>> make_channel_credentials(const TlsFiles& files,
                                                                           bool insecure_ok) {
  if (files.cert.empty() && files.key.empty() && files.ca.empty()) {
    if (!insecure_ok) {
      return Status::FailedPrecondition(
          "plaintext refused: give --tls-ca, use a loopback coordinator address, or pass "
          "--insecure");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (files.cert.empty() != files.key.empty()) {
    return Status::InvalidArgument(files.cert.empty() ? "--tls-cert: required with --tls-key"
                                                      : "--tls-key: required with --tls-cert");
  }
  if (files.ca.empty()) {
    return Status::InvalidArgument("--tls-ca: required with --tls-cert / --tls-key");
  }
  grpc::SslCredentialsOptions options;
  FEDTAIL_ASSIGN_OR_RETURN(options.pem_root_certs, read_file(files.ca, "--tls-ca"));
  if (!files.cert.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(options.pem_cert_chain, read_file(files.cert, "--tls-cert"));
    FEDTAIL_ASSIGN_OR_RETURN(options.pem_private_key, read_file(files.key, "--tls-key"));
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(options);
  if (!credentials) return Status::Internal("gRPC refused the channel TLS credentials");
  return credentials;
}

bool is_loopback_address(const std::string& host_port) {
  std::string host = host_of(host_port);
  if (host.empty()) return false;
  if (ieq(host, "localhost") || ieq(host, "localhost.")) return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    // ::ffff:127.x.y.z (IPv4-mapped loopback).
    if (IN6_IS_ADDR_V4MAPPED(&v6)) return v6.s6_addr[12] == 127;
  }
  return false;
}

Result<std::string> read_secret_file(const std::string& path) {
  FEDTAIL_ASSIGN_OR_RETURN(std::string secret, read_file(path, "--token-secret-file"));
  if (!secret.empty() && secret.back() == '\n') secret.pop_back();
  if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  if (secret.empty()) {
    return Status::InvalidArgument("--token-secret-file: " + path + " is empty");
  }
  if (secret.size() < kMinTokenSecretBytes) {
    return Status::InvalidArgument("--token-secret-file: " + path + " holds a secret of " +
                                   std::to_string(secret.size()) + " bytes, fewer than " +
                                   std::to_string(kMinTokenSecretBytes) +
                                   "; make one with `fedtail-certs secret --out FILE`");
  }
  return secret;
}

}  // namespace fedtail
