// fedtail-certs: certificates and secrets for a fedtail federation, through OpenSSL's API.
//
//   fedtail-certs ca     --out DIR [--days N] [--cn NAME] [--force]          -> DIR/ca.pem, ca.key
//   fedtail-certs server --ca DIR --out DIR --san localhost,127.0.0.1,host.example [--cn NAME]
//                        [--days N] [--force]                      -> DIR/server.pem, server.key
//   fedtail-certs client --ca DIR --out DIR --id CLIENT_ID [--days N] [--force]
//                                                                  -> DIR/<id>.pem, <id>.key
//   fedtail-certs secret --out FILE [--force]       (the coordinator's --token-secret-file)
//   fedtail-certs token  --secret-file FILE --client-id ID [--expires 30d] [--federation NAME]
//                        (prints the client's join token: ft1.<federation>.<expiry>.<mac>)
//
// Private keys and secrets are written with mode 0600. Existing files are kept unless --force.
// Exit status 0 on success, 1 with a one-line error naming the flag or file otherwise, 2 on bad
// usage.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/base/logging.h"
#include "common/base/status.h"
#include "common/security/certs.h"
#include "common/security/join_token.h"
#include "common/security/tls.h"

namespace {

using fedtail::Result;
using fedtail::Status;

int report(const Status& status) {
  if (status.ok()) return 0;
  spdlog::error("{}", status.message());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fedtail-certs: makes the certificate authority, server and client certificates, and join "
      "token secrets of a fedtail federation."};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  std::string out, ca_dir, cn, sans, id, secret_file, client_id;
  std::string expires = "30d";
  std::string federation = fedtail::kDefaultFederation;
  int ca_days = 3650;
  int days = 365;
  bool force = false;

  CLI::App* ca = app.add_subcommand("ca", "make a certificate authority: DIR/ca.pem, DIR/ca.key");
  ca->add_option("--out", out, "output directory")->required();
  ca->add_option("--days", ca_days, "validity in days")->capture_default_str();
  ca->add_option("--cn", cn, "the CA's common name (default \"fedtail CA\")");
  ca->add_flag("--force", force, "replace existing files");

  CLI::App* server = app.add_subcommand(
      "server", "make the coordinator's certificate: DIR/server.pem, DIR/server.key");
  server->add_option("--ca", ca_dir, "directory holding ca.pem and ca.key")->required();
  server->add_option("--out", out, "output directory")->required();
  server
      ->add_option("--san", sans,
                   "comma-separated DNS names and IP addresses the coordinator is reached by")
      ->required();
  server->add_option("--cn", cn, "common name (default: the first --san entry)");
  server->add_option("--days", days, "validity in days")->capture_default_str();
  server->add_flag("--force", force, "replace existing files");

  CLI::App* client = app.add_subcommand(
      "client", "make a client certificate (CN = client id): DIR/<id>.pem, DIR/<id>.key");
  client->add_option("--ca", ca_dir, "directory holding ca.pem and ca.key")->required();
  client->add_option("--out", out, "output directory")->required();
  client->add_option("--id", id, "the client id (e.g. client-3)")->required();
  client->add_option("--days", days, "validity in days")->capture_default_str();
  client->add_flag("--force", force, "replace existing files");

  CLI::App* secret =
      app.add_subcommand("secret", "make a join-token secret (32 random bytes, hex; mode 0600)");
  secret->add_option("--out", out, "the secret file to write")->required();
  secret->add_flag("--force", force, "replace an existing file");

  CLI::App* token = app.add_subcommand(
      "token", "print the join token of a client id (ft1.<federation>.<expiry>.<mac>)");
  token->add_option("--secret-file", secret_file, "the coordinator's secret file")->required();
  token->add_option("--client-id", client_id, "the client id")->required();
  token->add_option("--expires", expires, "validity from now: Ns, Nm, Nh or Nd")
      ->capture_default_str();
  token->add_option("--federation", federation, "the coordinator's --federation")
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fedtail-certs: %s (see --help)\n", e.what());
    return 2;
  }
  Status logging = fedtail::init_logging("fedtail-certs", log_level);
  if (!logging.ok()) {
    std::fprintf(stderr, "fedtail-certs: %s\n", logging.message().c_str());
    return 2;
  }

  if (ca->parsed()) {
    Status made = fedtail::certs::make_ca(out, cn.empty() ? "fedtail CA" : cn, ca_days, force);
    if (made.ok()) spdlog::info("wrote {}/ca.pem and {}/ca.key (mode 0600)", out, out);
    return report(made);
  }
  if (server->parsed()) {
    Result<std::vector<std::string>> list = fedtail::certs::parse_san_list(sans);
    if (!list.ok()) return report(list.status());
    Status made = fedtail::certs::make_server_certificate(ca_dir, out, *list, cn, days, force);
    if (made.ok()) {
      spdlog::info("wrote {}/server.pem and {}/server.key (mode 0600) for {}", out, out, sans);
    }
    return report(made);
  }
  if (client->parsed()) {
    Status made = fedtail::certs::make_client_certificate(ca_dir, out, id, days, force);
    if (made.ok()) {
      spdlog::info("wrote {}/{} and {}/{} (mode 0600)", out, fedtail::certs::client_cert_file(id),
                   out, fedtail::certs::client_key_file(id));
    }
    return report(made);
  }
  if (secret->parsed()) {
    Status made = fedtail::certs::make_secret_file(out, force);
    if (made.ok()) {
      spdlog::info("wrote {} (mode 0600): pass it to fedtail-coordinator --token-secret-file", out);
    }
    return report(made);
  }
  if (token->parsed()) {
    if (client_id.empty()) return report(Status::InvalidArgument("--client-id: must not be empty"));
    Result<int64_t> lifetime_s = fedtail::parse_duration_s(expires, "--expires");
    if (!lifetime_s.ok()) return report(lifetime_s.status());
    Status federation_ok = fedtail::validate_federation_name(federation, "--federation");
    if (!federation_ok.ok()) return report(federation_ok);
    Result<std::string> key = fedtail::read_secret_file(secret_file);
    if (!key.ok()) {
      // read_secret_file names the coordinator's flag; here the flag is --secret-file.
      std::string message = key.status().message();
      const std::string coordinator_flag = "--token-secret-file";
      if (message.rfind(coordinator_flag, 0) == 0) {
        message = "--secret-file" + message.substr(coordinator_flag.size());
      }
      return report(Status(key.status().code(), message));
    }
    const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    const int64_t expires_at = now_s + *lifetime_s;
    std::printf("%s\n", fedtail::make_join_token(*key, client_id, federation, expires_at).c_str());
    return 0;
  }
  return 2;
}
