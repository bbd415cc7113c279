#include "simulations/run_credentials.h"

#include <algorithm>
#include <filesystem>

#include "common/security/certs.h"

namespace fedtail::simulation {

Result<RunCredentials> make_run_credentials(const std::string& dir,
                                            const std::vector<std::string>& hosts, int days) {
  std::vector<std::string> sans;
  for (const std::string& host : hosts) {
    if (!host.empty() && std::find(sans.begin(), sans.end(), host) == sans.end()) {
      sans.push_back(host);
    }
  }
  if (sans.empty()) return Status::InvalidArgument("run credentials: no host name to certify");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError(dir + ": cannot create: " + ec.message());
  const std::filesystem::path base(dir);
  FEDTAIL_RETURN_IF_ERROR(certs::make_ca(dir, "fedtail-sim run CA", days, /*overwrite=*/true));
  const Status signed_server =
      certs::make_server_certificate(dir, dir, sans, /*common_name=*/"", days, /*overwrite=*/true);
  // The CA key has signed all it ever will: a copy left on a shared filesystem could only be
  // misused.
  std::filesystem::remove(base / certs::kCaKeyFile, ec);
  FEDTAIL_RETURN_IF_ERROR(signed_server);
  if (ec) return Status::IOError((base / certs::kCaKeyFile).string() + ": " + ec.message());
  RunCredentials credentials;
  credentials.ca_cert = (base / certs::kCaCertFile).string();
  credentials.server_cert = (base / certs::kServerCertFile).string();
  credentials.server_key = (base / certs::kServerKeyFile).string();
  credentials.token_secret = (base / "token.secret").string();
  FEDTAIL_RETURN_IF_ERROR(certs::make_secret_file(credentials.token_secret, /*overwrite=*/true));
  return credentials;
}

}  // namespace fedtail::simulation
