// Transport security end to end: a real fedtail-coordinator and real fedtail-client processes over
// loopback, with certificates from fedtail's own certs helper.
//   - mutual TLS: a client with a certificate of the coordinator's CA completes a 1-round run;
//     a client whose certificate comes from another CA is refused;
//   - a plaintext client to a TLS coordinator fails with a clear error;
//   - join tokens (server TLS, no client certificates): a good token completes the run, a forged
//     one is refused at once, and so are an expired one and one of another federation, each with
//     a message that says why.
// Runs are tiny: Fashion-MNIST trimmed to 50 examples per class, the small CNN, 2 SGD steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/security/certs.h"
#include "common/security/join_token.h"
#include "common/security/tls.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

const std::string kBin = FEDTAIL_BIN_DIR;

int64_t now_unix_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class TlsFederationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Per process: CTest runs each test case as its own process, in parallel.
    root_ = std::string(FEDTAIL_TEST_TMP) + "/tls_federation_test." + std::to_string(::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    ASSERT_TRUE(certs::make_ca(root_ + "/ca", "tls_federation_test CA", 2, false).ok());
    ASSERT_TRUE(certs::make_server_certificate(root_ + "/ca", root_ + "/server",
                                               {"localhost", "127.0.0.1"}, "", 2, false)
                    .ok());
    ASSERT_TRUE(
        certs::make_client_certificate(root_ + "/ca", root_ + "/clients", "client-0", 2, false)
            .ok());
    ASSERT_TRUE(certs::make_ca(root_ + "/rogue-ca", "rogue CA", 2, false).ok());
    ASSERT_TRUE(
        certs::make_client_certificate(root_ + "/rogue-ca", root_ + "/rogue", "client-0", 2, false)
            .ok());
    ASSERT_TRUE(certs::make_secret_file(root_ + "/secret", false).ok());

    nlohmann::json run = {
        {"seed", 1},
        {"threads", 1},
        {"device", "cpu"},
        {"rounds", 1},
        // No federated evaluation: it would score the whole test set and only slow the test.
        {"strategy", {{"name", "fedavg"}, {"min_fit_clients", 1}, {"fraction_evaluate", 0.0}}},
        {"federation",
         {{"min_available_clients", 1},
          {"round_timeout_s", 120},
          {"poll_timeout_ms", 2000},
          {"heartbeat_interval_ms", 500},
          {"client_timeout_s", 20},
          {"server_eval", false}}},
        {"data",
         {{"dataset", "fashion-mnist"},
          {"max_examples_per_class", 50},
          {"partition", "iid"},
          {"clients", 1}}},
        {"model", {{"arch", "cnn"}}},
        {"local", {{"max_steps", 2}, {"batch_size", 16}}}};
    std::ofstream(root_ + "/run.json") << run.dump(2);
    std::ofstream(root_ + "/client.json") << R"({"client_id": "client-0", "partition": 0})";
  }

  void SetUp() override {
    dir_ = root_ + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  // Starts a coordinator on 127.0.0.1 (any free port) with `security` flags; returns its port, or
  // 0 when it did not come up.
  int start_coordinator(std::unique_ptr<Process>* child, const std::vector<std::string>& security) {
    std::vector<std::string> args = {kBin + "/fedtail-coordinator",
                                     "--config",
                                     root_ + "/run.json",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--state-dir",
                                     dir_ + "/coord"};
    args.insert(args.end(), security.begin(), security.end());
    *child = std::make_unique<Process>(args, dir_ + "/coordinator.log");
    if (!(*child)->started()) return 0;
    const std::string port = test_support::wait_for_file(dir_ + "/coord/port", 60s);
    return port.empty() ? 0 : std::stoi(port);
  }

  std::unique_ptr<Process> start_client(const std::string& name, int port,
                                        const std::vector<std::string>& security) {
    std::vector<std::string> args = {kBin + "/fedtail-client",
                                     "--coordinator",
                                     "127.0.0.1:" + std::to_string(port),
                                     "--config",
                                     root_ + "/client.json",
                                     "--state-dir",
                                     dir_ + "/" + name + "-state",
                                     "--retry-timeout",
                                     "4"};
    args.insert(args.end(), security.begin(), security.end());
    return std::make_unique<Process>(args, dir_ + "/" + name + ".log");
  }

  std::vector<std::string> mtls_server() const {
    return {"--tls-cert",      root_ + "/server/server.pem",
            "--tls-key",       root_ + "/server/server.key",
            "--tls-client-ca", root_ + "/ca/ca.pem"};
  }

  static std::string root_;
  std::string dir_;
};

std::string TlsFederationTest::root_;

TEST_F(TlsFederationTest, MutualTlsClientCompletesARound) {
  std::unique_ptr<Process> coordinator;
  const int port = start_coordinator(&coordinator, mtls_server());
  ASSERT_GT(port, 0) << coordinator->log();
  std::unique_ptr<Process> client =
      start_client("client", port,
                   {"--tls-ca", root_ + "/ca/ca.pem", "--tls-cert", root_ + "/clients/client-0.pem",
                    "--tls-key", root_ + "/clients/client-0.key"});
  EXPECT_EQ(client->wait(180s), 0) << client->log();
  EXPECT_EQ(coordinator->wait(60s), 0) << coordinator->log();
  const std::string log = client->log();
  EXPECT_NE(log.find("mutual TLS"), std::string::npos) << log;
  EXPECT_NE(log.find("round 1 fit done"), std::string::npos) << log;
  EXPECT_NE(log.find("the coordinator ended the run"), std::string::npos) << log;
  EXPECT_NE(coordinator->log().find("client client-0 joined"), std::string::npos);
  // The coordinator aggregated the update and wrote its results.
  std::ifstream metrics(dir_ + "/coord/metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(metrics, line)) << coordinator->log();
  nlohmann::json record = nlohmann::json::parse(line);
  EXPECT_EQ(record.value("round", 0), 1) << line;
}

TEST_F(TlsFederationTest, CertificateFromAnotherCaIsRefused) {
  std::unique_ptr<Process> coordinator;
  const int port = start_coordinator(&coordinator, mtls_server());
  ASSERT_GT(port, 0) << coordinator->log();
  std::unique_ptr<Process> client =
      start_client("rogue", port,
                   {"--tls-ca", root_ + "/ca/ca.pem", "--tls-cert", root_ + "/rogue/client-0.pem",
                    "--tls-key", root_ + "/rogue/client-0.key"});
  EXPECT_EQ(client->wait(60s), 1) << client->log();
  const std::string log = client->log();
  EXPECT_NE(log.find("giving up"), std::string::npos) << log;
  EXPECT_NE(log.find("check --tls-ca, --tls-cert and --tls-key"), std::string::npos) << log;
  EXPECT_EQ(log.find("joined coordinator"), std::string::npos) << log;
  EXPECT_EQ(coordinator->log().find("client-0 joined"), std::string::npos) << coordinator->log();
  EXPECT_NE(coordinator->stop(30s), Process::kTimedOut);
}

TEST_F(TlsFederationTest, PlaintextClientToTlsCoordinatorFailsClearly) {
  std::unique_ptr<Process> coordinator;
  const int port = start_coordinator(&coordinator, mtls_server());
  ASSERT_GT(port, 0) << coordinator->log();
  std::unique_ptr<Process> client = start_client("plaintext", port, {});
  EXPECT_EQ(client->wait(60s), 1) << client->log();
  const std::string log = client->log();
  EXPECT_NE(log.find("plaintext"), std::string::npos) << log;
  EXPECT_NE(log.find("pass --tls-ca"), std::string::npos) << log;
  EXPECT_NE(log.find("giving up"), std::string::npos) << log;
  EXPECT_NE(coordinator->stop(30s), Process::kTimedOut);
}

TEST_F(TlsFederationTest, JoinTokensAdmitGoodAndRefuseForgedTokens) {
  std::unique_ptr<Process> coordinator;
  const int port = start_coordinator(
      &coordinator, {"--tls-cert", root_ + "/server/server.pem", "--tls-key",
                     root_ + "/server/server.key", "--token-secret-file", root_ + "/secret"});
  ASSERT_GT(port, 0) << coordinator->log();
  Result<std::string> secret = read_secret_file(root_ + "/secret");
  ASSERT_TRUE(secret.ok());

  // A forged token (the HMAC under another secret) is refused at once, without retries.
  const std::string forged = make_join_token("not the secret, but as long as one", "client-0",
                                             kDefaultFederation, now_unix_s() + 3600);
  std::unique_ptr<Process> intruder =
      start_client("forged", port, {"--tls-ca", root_ + "/ca/ca.pem", "--token", forged});
  EXPECT_EQ(intruder->wait(60s), 1) << intruder->log();
  const std::string refused = intruder->log();
  EXPECT_NE(refused.find("bad join token"), std::string::npos) << refused;
  EXPECT_NE(refused.find("bad signature"), std::string::npos) << refused;
  EXPECT_EQ(refused.find("retrying"), std::string::npos) << refused;
  // A token on the command line is visible in /proc: the client says so.
  EXPECT_NE(refused.find("prefer --token-file"), std::string::npos) << refused;

  // The right token, from a file as fedtail-certs prints it.
  std::ofstream(dir_ + "/token") << make_join_token(*secret, "client-0", kDefaultFederation,
                                                    now_unix_s() + 3600)
                                 << "\n";
  std::unique_ptr<Process> client = start_client(
      "client", port, {"--tls-ca", root_ + "/ca/ca.pem", "--token-file", dir_ + "/token"});
  EXPECT_EQ(client->wait(180s), 0) << client->log();
  EXPECT_EQ(coordinator->wait(60s), 0) << coordinator->log();
  EXPECT_NE(client->log().find("round 1 fit done"), std::string::npos) << client->log();
}

TEST_F(TlsFederationTest, ExpiredOrForeignTokensAreRefusedSayingWhy) {
  std::unique_ptr<Process> coordinator;
  const int port =
      start_coordinator(&coordinator, {"--tls-cert", root_ + "/server/server.pem", "--tls-key",
                                       root_ + "/server/server.key", "--token-secret-file",
                                       root_ + "/secret", "--federation", "tls-test"});
  ASSERT_GT(port, 0) << coordinator->log();
  Result<std::string> secret = read_secret_file(root_ + "/secret");
  ASSERT_TRUE(secret.ok());

  // A genuine token that expired a minute ago: refused at once (no retries), naming the expiry.
  const int64_t expired_at = now_unix_s() - 60;
  std::ofstream(dir_ + "/expired")
      << make_join_token(*secret, "client-0", "tls-test", expired_at) << "\n";
  const auto started = std::chrono::steady_clock::now();
  std::unique_ptr<Process> expired = start_client(
      "expired", port, {"--tls-ca", root_ + "/ca/ca.pem", "--token-file", dir_ + "/expired"});
  EXPECT_EQ(expired->wait(60s), 1) << expired->log();
  EXPECT_LT(std::chrono::steady_clock::now() - started, 30s);
  const std::string expired_log = expired->log();
  EXPECT_NE(expired_log.find("expired at " + format_utc_time(expired_at)), std::string::npos)
      << expired_log;
  EXPECT_EQ(expired_log.find("retrying"), std::string::npos) << expired_log;

  // A valid token of another federation (the default one), under the same secret.
  std::ofstream(dir_ + "/foreign")
      << make_join_token(*secret, "client-0", kDefaultFederation, now_unix_s() + 3600) << "\n";
  std::unique_ptr<Process> foreign = start_client(
      "foreign", port, {"--tls-ca", root_ + "/ca/ca.pem", "--token-file", dir_ + "/foreign"});
  EXPECT_EQ(foreign->wait(60s), 1) << foreign->log();
  EXPECT_NE(foreign->log().find("issued for federation \"fedtail\", this coordinator is "
                                "\"tls-test\""),
            std::string::npos)
      << foreign->log();
  // The coordinator logged both refusals with their reasons.
  EXPECT_NE(coordinator->log().find("expired at"), std::string::npos) << coordinator->log();
  EXPECT_NE(coordinator->stop(30s), Process::kTimedOut);
}

TEST_F(TlsFederationTest, VirtualClientsDeriveTheirTokensFromTheSecret) {
  std::unique_ptr<Process> coordinator;
  const int port = start_coordinator(
      &coordinator, {"--tls-cert", root_ + "/server/server.pem", "--tls-key",
                     root_ + "/server/server.key", "--token-secret-file", root_ + "/secret"});
  ASSERT_GT(port, 0) << coordinator->log();
  // A simulation worker hosting client-0 (the run has one client), trusted with the secret.
  std::unique_ptr<Process> worker = std::make_unique<Process>(
      std::vector<std::string>{kBin + "/fedtail-client", "--coordinator",
                               "localhost:" + std::to_string(port), "--clients", "0-0", "--tls-ca",
                               root_ + "/ca/ca.pem", "--token-secret-file", root_ + "/secret",
                               "--state-dir", ":memory:", "--retry-timeout", "4"},
      dir_ + "/worker.log");
  EXPECT_EQ(worker->wait(180s), 0) << worker->log();
  EXPECT_EQ(coordinator->wait(60s), 0) << coordinator->log();
  EXPECT_NE(worker->log().find("state in memory only"), std::string::npos) << worker->log();
  // One virtual client: the coordinator names it and the worker connection it came through.
  EXPECT_NE(coordinator->log().find("client client-0 joined ("), std::string::npos)
      << coordinator->log();
}

TEST_F(TlsFederationTest, CertsToolPrintsTheTokenTheCoordinatorExpects) {
  const int64_t before = now_unix_s();
  std::unique_ptr<Process> tool = std::make_unique<Process>(
      std::vector<std::string>{kBin + "/fedtail-certs", "token", "--secret-file", root_ + "/secret",
                               "--client-id", "client-7"},
      dir_ + "/token.out");
  ASSERT_EQ(tool->wait(30s), 0) << tool->log();
  Result<std::string> secret = read_secret_file(root_ + "/secret");
  ASSERT_TRUE(secret.ok());
  std::string token = tool->log();
  ASSERT_FALSE(token.empty());
  EXPECT_EQ(token.back(), '\n');
  token.pop_back();
  // Defaults: federation "fedtail", valid for 30 days.
  Result<ParsedJoinToken> parsed = parse_join_token(token);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->federation, "fedtail");
  EXPECT_GE(parsed->expires_unix_s, before + 30 * 86400);
  EXPECT_LE(parsed->expires_unix_s, now_unix_s() + 30 * 86400);
  EXPECT_TRUE(check_join_token(*secret, "client-7", token, "fedtail", now_unix_s()).ok());
  EXPECT_FALSE(check_join_token(*secret, "client-8", token, "fedtail", now_unix_s()).ok());

  std::unique_ptr<Process> lab = std::make_unique<Process>(
      std::vector<std::string>{kBin + "/fedtail-certs", "token", "--secret-file", root_ + "/secret",
                               "--client-id", "client-7", "--expires", "2h", "--federation",
                               "lab.v2"},
      dir_ + "/lab.out");
  ASSERT_EQ(lab->wait(30s), 0) << lab->log();
  std::string lab_token = lab->log();
  lab_token.pop_back();
  Result<ParsedJoinToken> lab_parsed = parse_join_token(lab_token);
  ASSERT_TRUE(lab_parsed.ok()) << lab_parsed.status().to_string();
  EXPECT_EQ(lab_parsed->federation, "lab.v2");
  EXPECT_LE(lab_parsed->expires_unix_s, now_unix_s() + 2 * 3600);
  EXPECT_TRUE(check_join_token(*secret, "client-7", lab_token, "lab.v2", now_unix_s()).ok());

  std::unique_ptr<Process> bad_expiry = std::make_unique<Process>(
      std::vector<std::string>{kBin + "/fedtail-certs", "token", "--secret-file", root_ + "/secret",
                               "--client-id", "client-7", "--expires", "3 weeks"},
      dir_ + "/bad_expiry.out");
  EXPECT_EQ(bad_expiry->wait(30s), 1);
  EXPECT_NE(bad_expiry->log().find("--expires"), std::string::npos) << bad_expiry->log();

  std::unique_ptr<Process> missing = std::make_unique<Process>(
      std::vector<std::string>{kBin + "/fedtail-certs", "token", "--secret-file", dir_ + "/nope",
                               "--client-id", "client-7"},
      dir_ + "/missing.out");
  EXPECT_EQ(missing->wait(30s), 1);
  EXPECT_NE(missing->log().find("--secret-file: file not found"), std::string::npos)
      << missing->log();
}

}  // namespace
}  // namespace fedtail
