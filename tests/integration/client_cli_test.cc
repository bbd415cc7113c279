// fedtail-client and fedtail-certs as a user meets them: flag and file errors on one line, SIGTERM
// while waiting for a task (leave, exit 0), a client started before its coordinator (it retries
// with backoff and joins once the coordinator is up), virtual clients (--clients A-B), and the
// certificate tool's subcommands.
#include "tests/support/cli.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/security/certs.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::binary_path;
using test_support::Process;
using test_support::run_cli;

// A TCP port that was free a moment ago.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

nlohmann::json tiny_run(int clients) {
  return {
      {"seed", 3},
      {"threads", 1},
      {"device", "cpu"},
      {"rounds", 1},
      {"strategy", {{"name", "fedavg"}, {"min_fit_clients", clients}, {"fraction_evaluate", 0.0}}},
      {"federation",
       {{"min_available_clients", clients},
        {"round_timeout_s", 120},
        {"poll_timeout_ms", 1000},
        {"heartbeat_interval_ms", 500},
        {"client_timeout_s", 20},
        {"server_eval", false}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"max_examples_per_class", 50},
        {"partition", "iid"},
        {"clients", clients}}},
      {"model", {{"arch", "cnn"}}},
      {"local", {{"max_steps", 2}, {"batch_size", 16}}}};
}

class ClientCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test_support::scratch_dir("client_cli_test");
    test_support::write_file(dir_ + "/client.json", R"({"client_id": "client-0", "partition": 0})");
  }
  // The coordinator's port once it listens; 0 if it did not come up.
  static int wait_port(const std::string& state_dir) {
    const std::string port = test_support::wait_for_file(state_dir + "/port", 60s);
    return port.empty() ? 0 : std::stoi(port);
  }
  std::string dir_;
};

TEST_F(ClientCliTest, VersionAndHelp) {
  test_support::CliRun version = run_cli(binary_path("fedtail-client"), "--version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.out.find(FEDTAIL_VERSION), std::string::npos);
  test_support::CliRun help = run_cli(binary_path("fedtail-client"), "--help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--coordinator", "--clients", "--tls-ca", "--token-file", "--state-dir",
                           "--plugin", "--retry-timeout"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

TEST_F(ClientCliTest, BadFlagsAndFilesAreOneLineErrors) {
  struct Case {
    std::string args;
    int exit_code;
    std::string message;
  };
  const std::string c = dir_ + "/client.json";
  test_support::write_file(dir_ + "/no-partition.json", R"({"client_id": "client-0"})");
  ASSERT_TRUE(certs::make_ca(dir_ + "/ca", "ca", 1, false).ok());
  ASSERT_TRUE(
      certs::make_client_certificate(dir_ + "/ca", dir_ + "/ca", "client-9", 1, false).ok());
  const std::vector<Case> cases = {
      {"", 2, "--coordinator is required"},
      {"--coordinator 127.0.0.1:1", 1, "--config: required unless --clients is given"},
      {"--coordinator 127.0.0.1:1 --clients 5-2", 1,
       "--clients: expected A-B with 0 <= A <= B, or A (got \"5-2\")"},
      {"--coordinator 127.0.0.1:1 --config " + dir_ + "/nope.json", 1, "nope.json"},
      {"--coordinator 127.0.0.1:1 --config " + dir_ + "/no-partition.json", 1,
       "no-partition.json.partition: missing required field"},
      {"--coordinator 127.0.0.1:1 --config " + c + " --device tpu", 1, "--device"},
      {"--coordinator 192.0.2.1:7000 --config " + c, 1, "plaintext refused"},
      {"--coordinator 127.0.0.1:1 --config " + c + " --tls-ca " + dir_ + "/missing.pem", 1,
       "missing.pem"},
      {"--coordinator 127.0.0.1:1 --config " + c + " --tls-ca " + dir_ + "/ca/ca.pem --tls-cert " +
           dir_ + "/ca/client-9.pem --tls-key " + dir_ + "/ca/client-9.key",
       1, "the certificate is for \"client-9\" (its CN)"},
      {"--coordinator 127.0.0.1:1 --config " + c + " --token a --token-file b", 2, "excludes"},
  };
  for (const Case& t : cases) {
    test_support::CliRun r = run_cli(binary_path("fedtail-client"), t.args);
    EXPECT_EQ(r.exit_code, t.exit_code) << t.args << "\n" << r.err;
    EXPECT_NE(r.err.find(t.message), std::string::npos) << t.args << "\n" << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
  }
}

TEST_F(ClientCliTest, SigtermWhileWaitingLeavesAndExitsZero) {
  // Two clients are needed before a round starts: the one client just long-polls.
  test_support::write_file(dir_ + "/run.json", tiny_run(2).dump());
  Process coordinator({binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json",
                       "--listen", "127.0.0.1:0", "--state-dir", dir_ + "/coord"},
                      dir_ + "/coordinator.log");
  const int port = wait_port(dir_ + "/coord");
  ASSERT_GT(port, 0) << coordinator.log();
  Process client(
      {binary_path("fedtail-client"), "--coordinator", "127.0.0.1:" + std::to_string(port),
       "--config", dir_ + "/client.json", "--state-dir", dir_ + "/state"},
      dir_ + "/client.log");
  ASSERT_TRUE(client.wait_for_log_line("data ready", 60s)) << client.log();
  client.signal(SIGTERM);
  EXPECT_EQ(client.wait(20s), 0) << client.log();
  EXPECT_NE(client.log().find("received Terminated"), std::string::npos) << client.log();
  EXPECT_TRUE(coordinator.wait_for_log_line("left (1 client(s)): stopped by a signal", 10s))
      << coordinator.log();
  coordinator.signal(SIGTERM);
  coordinator.wait(30s);
}

TEST_F(ClientCliTest, ClientsStartedBeforeTheCoordinatorJoinWhenItComesUp) {
  const int port = free_port();
  const std::string target = "127.0.0.1:" + std::to_string(port);
  // One process hosting two virtual clients, started first.
  test_support::write_file(dir_ + "/worker.json", R"({"state_dir": ")" + dir_ + R"(/state"})");
  Process worker({binary_path("fedtail-client"), "--coordinator", target, "--config",
                  dir_ + "/worker.json", "--clients", "0-1", "--retry-timeout", "60"},
                 dir_ + "/worker.log");
  ASSERT_TRUE(worker.wait_for_log_line("retrying in", 30s)) << worker.log();
  EXPECT_NE(worker.log().find("unreachable"), std::string::npos) << worker.log();

  test_support::write_file(dir_ + "/run.json", tiny_run(2).dump());
  Process coordinator({binary_path("fedtail-coordinator"), "--config", dir_ + "/run.json",
                       "--listen", target, "--state-dir", dir_ + "/coord"},
                      dir_ + "/coordinator.log");
  EXPECT_EQ(worker.wait(180s), 0) << worker.log();
  EXPECT_EQ(coordinator.wait(60s), 0) << coordinator.log();
  const std::string log = worker.log();
  EXPECT_NE(log.find("client-0 .. client-1: partitions 0..1"), std::string::npos) << log;
  EXPECT_NE(log.find("client-0: round 1 fit done"), std::string::npos) << log;
  EXPECT_NE(log.find("client-1: round 1 fit done"), std::string::npos) << log;
  EXPECT_NE(coordinator.log().find("hosting 2 clients (client-0 .. client-1)"), std::string::npos)
      << coordinator.log();
}

TEST_F(ClientCliTest, CertsToolMakesAWorkingSet) {
  const std::string certs = binary_path("fedtail-certs");
  EXPECT_EQ(run_cli(certs, "ca --out " + dir_ + "/pki --days 10").exit_code, 0);
  EXPECT_EQ(run_cli(certs, "server --ca " + dir_ + "/pki --out " + dir_ +
                               "/pki --san localhost,127.0.0.1,host.example")
                .exit_code,
            0);
  EXPECT_EQ(
      run_cli(certs, "client --ca " + dir_ + "/pki --out " + dir_ + "/pki --id client-5").exit_code,
      0);
  EXPECT_EQ(run_cli(certs, "secret --out " + dir_ + "/pki/secret").exit_code, 0);
  EXPECT_TRUE(certs::verify_certificate(dir_ + "/pki/server.pem", dir_ + "/pki/ca.pem").ok());
  EXPECT_EQ(*certs::certificate_common_name(dir_ + "/pki/client-5.pem"), "client-5");
  EXPECT_EQ(*certs::certificate_subject_alt_names(dir_ + "/pki/server.pem"),
            (std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1", "DNS:host.example"}));
  for (const char* key : {"/pki/ca.key", "/pki/server.key", "/pki/client-5.key", "/pki/secret"}) {
    struct stat st {};
    ASSERT_EQ(::stat((dir_ + key).c_str(), &st), 0) << key;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << key;
  }
  test_support::CliRun token =
      run_cli(certs, "token --secret-file " + dir_ + "/pki/secret --client-id client-5");
  EXPECT_EQ(token.exit_code, 0);
  // ft1.<federation>.<expiry>.<64 hex digits> and a newline; federation "fedtail" by default.
  EXPECT_EQ(token.out.rfind("ft1.fedtail.", 0), 0u) << token.out;
  EXPECT_EQ(token.out.size(), std::string("ft1.fedtail.1234567890.").size() + 64 + 1) << token.out;

  test_support::CliRun again = run_cli(certs, "ca --out " + dir_ + "/pki");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("ca.pem: exists; pass --force to replace it"), std::string::npos)
      << again.err;
  test_support::CliRun bad_san =
      run_cli(certs, "server --ca " + dir_ + "/pki --out " + dir_ + "/x --san 'a b'");
  EXPECT_EQ(bad_san.exit_code, 1);
  EXPECT_NE(bad_san.err.find("\"a b\" is neither an IP address nor a DNS name"), std::string::npos)
      << bad_san.err;
  EXPECT_EQ(run_cli(certs, "").exit_code, 2);
}

}  // namespace
}  // namespace fedtail
