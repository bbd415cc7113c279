// Federated training across "machines": the coordinator and two clients each in a network
// namespace of their own, joined by one veth pair per client into the coordinator's namespace
// (client k is 10.231.<k+1>.2/24, the coordinator 10.231.<k+1>.1/24 on that link). The coordinator
// listens on 0.0.0.0 — not loopback — so the run follows README's "Federated training across
// machines" walkthrough: fedtail-certs makes the CA and the server certificate (with the
// coordinator's addresses as SANs), then either client certificates (mutual TLS, the walkthrough's
// main commands) or a join-token secret and one token per client (its "Identity" paragraph).
//
// Needs root and `ip netns` (iproute2); skips otherwise. Namespace and interface names carry the
// test process's pid, and the namespaces (with their veth pairs) are deleted at the end, failed
// assertions included.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/process.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kClients = 2;
constexpr int kRounds = 2;
// The port of README's walkthrough; each namespace has its own ports, so it cannot clash.
constexpr char kPort[] = "50051";

// The `ip` binary, or "" when iproute2 is not installed.
std::string ip_binary() {
  for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(path, X_OK) == 0) return path;
  }
  return "";
}

// The coordinator's address on client k's link.
std::string coordinator_address(int k) { return "10.231." + std::to_string(k + 1) + ".1"; }
std::string client_address(int k) { return "10.231." + std::to_string(k + 1) + ".2"; }

nlohmann::json run_config() {
  return {
      {"seed", 2},
      {"threads", 1},
      {"device", "cpu"},
      {"rounds", kRounds},
      // No evaluation: the test is about the network; evaluation would only slow it down.
      {"strategy", {{"name", "fedavg"}, {"min_fit_clients", kClients}, {"fraction_evaluate", 0.0}}},
      {"federation",
       {{"min_available_clients", kClients},
        {"round_timeout_s", 120},
        {"poll_timeout_ms", 2000},
        {"heartbeat_interval_ms", 500},
        {"client_timeout_s", 20},
        {"server_eval", false}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"max_examples_per_class", 50},
        {"imbalance_factor", 10},
        {"partition", "iid"},
        {"clients", kClients}}},
      {"model", {{"arch", "cnn"}}},
      {"local", {{"max_steps", 4}, {"batch_size", 16}}}};
}

class MultihostNetns : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"fedtail-coordinator", "fedtail-client", "fedtail-certs"}) {
      if (!fs::exists(test_support::binary_path(name))) {
        GTEST_SKIP() << test_support::binary_path(name) << " is not built";
      }
    }
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
    ip_ = ip_binary();
    if (ip_.empty()) GTEST_SKIP() << "`ip` not found: install iproute2";
    dir_ = test_support::scratch_dir("multihost_netns");

    const std::string pid = std::to_string(::getpid());
    coordinator_ns_ = "ftc" + pid;
    for (int k = 0; k < kClients; ++k) client_ns_.push_back("ftk" + pid + "n" + std::to_string(k));
    // The first namespace tells whether this machine allows them at all.
    std::string error;
    if (!ip({"netns", "add", coordinator_ns_}, &error)) {
      GTEST_SKIP() << "`ip netns add` failed (no network namespaces here?): " << error;
    }
    made_.push_back(coordinator_ns_);
    ASSERT_TRUE(ip({"-n", coordinator_ns_, "link", "set", "lo", "up"}, &error)) << error;
    for (int k = 0; k < kClients; ++k) {
      const std::string& ns = client_ns_[k];
      ASSERT_TRUE(ip({"netns", "add", ns}, &error)) << error;
      made_.push_back(ns);
      // Interface names are at most 15 characters: "ftc" + pid (<= 7 digits) + "v" + k.
      const std::string coordinator_end = "ftc" + pid + "v" + std::to_string(k);
      const std::string client_end = "ftk" + pid + "v" + std::to_string(k);
      ASSERT_TRUE(ip({"link", "add", coordinator_end, "netns", coordinator_ns_, "type", "veth",
                      "peer", "name", client_end, "netns", ns},
                     &error))
          << error;
      ASSERT_TRUE(ip({"-n", coordinator_ns_, "addr", "add", coordinator_address(k) + "/24", "dev",
                      coordinator_end},
                     &error))
          << error;
      ASSERT_TRUE(ip({"-n", coordinator_ns_, "link", "set", coordinator_end, "up"}, &error))
          << error;
      ASSERT_TRUE(
          ip({"-n", ns, "addr", "add", client_address(k) + "/24", "dev", client_end}, &error))
          << error;
      ASSERT_TRUE(ip({"-n", ns, "link", "set", client_end, "up"}, &error)) << error;
      ASSERT_TRUE(ip({"-n", ns, "link", "set", "lo", "up"}, &error)) << error;
    }
    test_support::write_file(dir_ + "/run.json", run_config().dump(2));
  }

  void TearDown() override {
    // Deleting a namespace deletes its end of each veth pair, and so the pair.
    for (const std::string& ns : made_) {
      std::string error;
      if (!ip({"netns", "del", ns}, &error)) ADD_FAILURE() << "cleanup: " << error;
    }
  }

  // Runs `ip args`; false (with its output in *error) when it fails.
  bool ip(const std::vector<std::string>& args, std::string* error) {
    std::vector<std::string> argv = {ip_};
    argv.insert(argv.end(), args.begin(), args.end());
    Process p(argv, dir_.empty() ? "/dev/null" : dir_ + "/ip.log");
    const int code = p.wait(30s);
    if (code == 0) return true;
    std::string line;
    for (const std::string& a : argv) line += a + " ";
    *error = line + "-> " + p.describe_exit() + ": " + p.log();
    return false;
  }

  // `binary args` inside namespace `ns`.
  std::unique_ptr<Process> start_in(const std::string& ns, const std::string& binary,
                                    const std::vector<std::string>& args, const std::string& log) {
    std::vector<std::string> argv = {ip_, "netns", "exec", ns, test_support::binary_path(binary)};
    argv.insert(argv.end(), args.begin(), args.end());
    return std::make_unique<Process>(argv, dir_ + "/" + log);
  }

  // fedtail-certs with shell-word `args`; its stdout (fails the test on a non-zero exit).
  std::string certs(const std::string& args) {
    test_support::CliRun r =
        test_support::run_cli(test_support::binary_path("fedtail-certs"), args);
    EXPECT_EQ(r.exit_code, 0) << "fedtail-certs " << args << ": " << r.err;
    return r.out;
  }

  // Runs the federation: the coordinator with `security` flags, client k with `client_security(k)`;
  // checks that every process succeeds, that the clients reached the coordinator through its
  // address on their own link, and that the run completed.
  void run_federation(const std::vector<std::string>& security,
                      const std::function<std::vector<std::string>(int)>& client_security) {
    // As in README: --listen 0.0.0.0:50051 ... --state-dir state.
    std::vector<std::string> args = {
        "--config",    dir_ + "/run.json", "--listen",  std::string("0.0.0.0:") + kPort,
        "--state-dir", dir_ + "/state",    "--threads", "1"};
    args.insert(args.end(), security.begin(), security.end());
    std::unique_ptr<Process> coordinator =
        start_in(coordinator_ns_, "fedtail-coordinator", args, "coordinator.log");
    ASSERT_FALSE(test_support::wait_for_file(dir_ + "/state/port", 120s).empty())
        << coordinator->log();

    std::vector<std::unique_ptr<Process>> clients;
    for (int k = 0; k < kClients; ++k) {
      const std::string id = "client-" + std::to_string(k);
      // client.json: {"client_id": "client-0", "partition": 0}
      const std::string config = dir_ + "/" + id + ".json";
      test_support::write_file(config, nlohmann::json{{"client_id", id}, {"partition", k}}.dump());
      std::vector<std::string> client_args = {
          "--coordinator",   coordinator_address(k) + ":" + kPort,
          "--config",        config,
          "--device",        "auto",
          "--state-dir",     dir_ + "/" + id + "-state",
          "--threads",       "1",
          "--retry-timeout", "60"};
      const std::vector<std::string> extra = client_security(k);
      client_args.insert(client_args.end(), extra.begin(), extra.end());
      clients.push_back(start_in(client_ns_[k], "fedtail-client", client_args, id + ".log"));
    }
    ASSERT_EQ(coordinator->wait(300s), 0) << coordinator->log() << "\n--- client-0:\n"
                                          << clients[0]->log();
    for (int k = 0; k < kClients; ++k) {
      EXPECT_EQ(clients[k]->wait(60s), 0) << clients[k]->log();
      const std::string log = clients[k]->log();
      EXPECT_NE(log.find("joined coordinator " + coordinator_address(k) + ":" + kPort +
                         " as client-" + std::to_string(k)),
                std::string::npos)
          << log;
      EXPECT_NE(log.find("round " + std::to_string(kRounds) + " fit done"), std::string::npos)
          << log;
    }
    const std::string log = coordinator->log();
    EXPECT_NE(log.find(std::string("listening on 0.0.0.0:") + kPort), std::string::npos) << log;
    const std::string summary_text = test_support::read_file(dir_ + "/state/summary.json");
    ASSERT_FALSE(summary_text.empty()) << log;
    const nlohmann::json summary = nlohmann::json::parse(summary_text);
    EXPECT_EQ(summary.value("rounds_completed", 0), kRounds) << summary.dump(2);
    EXPECT_TRUE(fs::exists(dir_ + "/state/final_model.bundle"));
  }

  // The walkthrough's first two commands: a CA, and a server certificate for the coordinator's
  // addresses (one per link here).
  void make_ca_and_server_certificate() {
    const std::string pki = dir_ + "/pki";
    certs("ca --out " + pki);
    std::string sans;
    for (int k = 0; k < kClients; ++k) sans += (k ? "," : "") + coordinator_address(k);
    certs("server --ca " + pki + " --out " + pki + " --san " + sans);
  }

  std::string ip_;
  std::string dir_;
  std::string coordinator_ns_;
  std::vector<std::string> client_ns_;
  std::vector<std::string> made_;  // namespaces to delete
};

TEST_F(MultihostNetns, MutualTlsAcrossNamespaces) {
  make_ca_and_server_certificate();
  ASSERT_FALSE(HasFailure());
  const std::string pki = dir_ + "/pki";
  for (int k = 0; k < kClients; ++k) {
    certs("client --ca " + pki + " --out " + pki + " --id client-" + std::to_string(k));
  }
  ASSERT_FALSE(HasFailure());
  run_federation({"--tls-cert", pki + "/server.pem", "--tls-key", pki + "/server.key",
                  "--tls-client-ca", pki + "/ca.pem"},
                 [&](int k) {
                   const std::string id = "client-" + std::to_string(k);
                   return std::vector<std::string>{"--tls-ca",   pki + "/ca.pem",
                                                   "--tls-cert", pki + "/" + id + ".pem",
                                                   "--tls-key",  pki + "/" + id + ".key"};
                 });
}

TEST_F(MultihostNetns, TlsWithJoinTokensAcrossNamespaces) {
  make_ca_and_server_certificate();
  const std::string pki = dir_ + "/pki";
  certs("secret --out " + pki + "/secret.hex");
  // As in README: each client's token in a file (not on its command line), bound to the
  // coordinator's --federation, valid for an hour.
  for (int k = 0; k < kClients; ++k) {
    const std::string token =
        certs("token --secret-file " + pki + "/secret.hex --client-id client-" + std::to_string(k) +
              " --expires 1h --federation netns-test");
    test_support::write_file(pki + "/client-" + std::to_string(k) + ".token", token);
  }
  ASSERT_FALSE(HasFailure());
  run_federation({"--tls-cert", pki + "/server.pem", "--tls-key", pki + "/server.key",
                  "--token-secret-file", pki + "/secret.hex", "--federation", "netns-test"},
                 [&](int k) {
                   return std::vector<std::string>{"--tls-ca", pki + "/ca.pem", "--token-file",
                                                   pki + "/client-" + std::to_string(k) + ".token"};
                 });
}

}  // namespace
}  // namespace fedtail
