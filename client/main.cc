// fedtail-client: one federated client (or a range of virtual clients) that dials out to a
// coordinator, long-polls for tasks, trains/evaluates locally and uploads the results.
//
//   fedtail-client --coordinator HOST:PORT --config client.json [--clients A-B]
//                  [--device auto|cpu|cuda[:i]] [--tls-ca F [--tls-cert F --tls-key F]]
//                  [--token-file F | --token T | --token-secret-file F [--federation NAME]]
//                  [--state-dir D]
//                  [--insecure] [--plugin LIB.so]...
//                  [--threads N] [--retry-timeout S] [--data-root D] [--max-bundle-bytes B]
//                  [--log-level L]
//
// Exit status: 0 when the coordinator ends the run or on SIGTERM/SIGINT (the current task is
// abandoned and the client leaves); 1 on an error (one line naming the flag, field or file); 2 on
// bad command-line usage.
//
// Test hook: FEDTAIL_FAULT_PAUSE=download|train|upload:<round>[:<seconds>] in the environment makes
// the client pause once at that point of that round's fit task, logging "fault injection: pausing
// ...", so that integration tests can kill or freeze it there (client/fault_pause.h).
//
// Shutdown order: the signal handler wakes the signal thread, which stops the connection and the
// runner; the loop returns; Leave is sent; an abandoned task's worker gets a few seconds, after
// which the process exits without waiting for it (training cannot be interrupted mid-step).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/attack.h"
#include "client/client_loop.h"
#include "client/client_options.h"
#include "client/connection.h"
#include "client/state_store.h"
#include "client/task_runner.h"
#include "common/base/logging.h"
#include "common/base/malloc_tuning.h"
#include "common/base/status.h"
#include "common/learning/device.h"
#include "common/security/certs.h"
#include "common/security/join_token.h"
#include "common/security/tls.h"
#include "strategies/registry.h"

namespace fedtail::client {
namespace {

constexpr char kDefaultStateDir[] = "fedtail-client-state";
constexpr char kMemoryStateDir[] = ":memory:";
constexpr int64_t kWorkerGraceMs = 2000;

// Written by the signal handler, read by the signal thread.
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(g_signal_pipe[1], &byte, 1);
  (void)ignored;
  errno = saved;
}

struct Flags {
  std::string coordinator;
  std::string config;
  std::string clients;
  std::string device;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token;
  std::string token_file;
  std::string token_secret_file;
  std::string federation = kDefaultFederation;  // of the tokens made from --token-secret-file
  std::string state_dir;
  bool insecure = false;
  std::vector<std::string> plugins;
  int threads = 0;
  double retry_timeout_s = 600;
  std::string data_root;
  std::string model_path;
  uint64_t max_bundle_bytes = kDefaultMaxBundleBytes;
  std::string attack;  // red-team mode (client/attack.h); "" = honest
  std::string log_level = "info";
};

Result<std::string> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound("--token-file: cannot open " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string token = buffer.str();
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (token.empty()) return Status::InvalidArgument("--token-file: " + path + " is empty");
  return token;
}

// Everything the loop needs, built from the flags.
struct Setup {
  ConnectionOptions connection;
  TaskRunnerOptions runner;
  std::string state_dir;
};

Result<Setup> make_setup(const Flags& flags) {
  Setup setup;
  const bool ranged = !flags.clients.empty();
  if (flags.config.empty() && !ranged) {
    return Status::InvalidArgument("--config: required unless --clients is given");
  }
  ClientOptions options;
  if (!flags.config.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(options,
                             load_client_options(flags.config, /*require_identity=*/!ranged));
  }
  if (ranged) {
    FEDTAIL_ASSIGN_OR_RETURN(ClientRange range, parse_client_range(flags.clients));
    for (int k = range.first; k <= range.last; ++k) {
      setup.runner.clients.push_back({virtual_client_id(k), k});
    }
    setup.runner.virtual_clients = true;
    setup.connection.client_id =
        options.client_id.empty()
            ? "clients-" + std::to_string(range.first) + "-" + std::to_string(range.last)
            : options.client_id;
  } else {
    setup.runner.clients.push_back({options.client_id, options.partition});
    setup.connection.client_id = options.client_id;
  }
  setup.runner.data_root = !flags.data_root.empty() ? flags.data_root : options.data_root;
  setup.runner.model_path = !flags.model_path.empty() ? flags.model_path : options.model_path;
  setup.runner.threads = flags.threads > 0 ? flags.threads : options.threads;
  if (flags.threads < 0) return Status::InvalidArgument("--threads: must be >= 0");
  if (!flags.device.empty()) {
    Result<torch::Device> device = parse_device(flags.device);
    if (!device.ok()) return device.status().with_context("--device");
    setup.runner.device = flags.device;
  }

  setup.connection.target = flags.coordinator;
  setup.connection.tls = TlsFiles{flags.tls_cert, flags.tls_key, flags.tls_ca};
  setup.connection.insecure = flags.insecure;
  if (flags.retry_timeout_s < 0) {
    return Status::InvalidArgument("--retry-timeout: must be >= 0 (0 = retry forever)");
  }
  setup.connection.retry_timeout_s = flags.retry_timeout_s;
  if (flags.max_bundle_bytes == 0)
    return Status::InvalidArgument("--max-bundle-bytes: must be >= 1");
  setup.connection.max_bundle_bytes = flags.max_bundle_bytes;
  FEDTAIL_ASSIGN_OR_RETURN(setup.runner.attack, parse_attack(flags.attack));
  if (setup.runner.attack.kind != AttackOptions::Kind::kNone) {
    spdlog::warn(
        "RED-TEAM MODE (--attack {}): every update this process uploads is hostile; "
        "for robustness benchmarks only",
        flags.attack);
  }
  if (!flags.token.empty()) {
    spdlog::warn(
        "--token: a token on the command line is visible to other users of this machine (in "
        "/proc and ps); prefer --token-file");
    setup.connection.join_token = flags.token;
  } else if (!flags.token_file.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(setup.connection.join_token, read_token_file(flags.token_file));
  } else if (!flags.token_secret_file.empty()) {
    // A worker trusted with the secret derives every token itself (virtual clients' at each Join).
    FEDTAIL_RETURN_IF_ERROR(validate_federation_name(flags.federation, "--federation"));
    FEDTAIL_ASSIGN_OR_RETURN(setup.runner.token_secret, read_secret_file(flags.token_secret_file));
    setup.runner.token_federation = flags.federation;
    const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    setup.connection.join_token =
        make_join_token(setup.runner.token_secret, setup.connection.client_id, flags.federation,
                        now_s + kDerivedTokenLifetimeS);
  }
  if (!flags.tls_cert.empty()) {
    // Under mutual TLS the coordinator knows this connection by its certificate's CN.
    FEDTAIL_ASSIGN_OR_RETURN(std::string cn, certs::certificate_common_name(flags.tls_cert));
    if (!ranged && cn != options.client_id) {
      return Status::InvalidArgument("--tls-cert: the certificate is for \"" + cn +
                                     "\" (its CN), but " + flags.config + " says client_id \"" +
                                     options.client_id + "\"");
    }
    setup.connection.client_id = cn;
  }

  std::string state_dir = !flags.state_dir.empty()     ? flags.state_dir
                          : !options.state_dir.empty() ? options.state_dir
                                                       : kDefaultStateDir;
  setup.state_dir = state_dir == kMemoryStateDir ? "" : state_dir;
  return setup;
}

int run(const Flags& flags) {
  // SIGTERM/SIGINT go to a handler that only writes the signal number to a pipe; a thread reads
  // it. (Blocking the signals instead would not cover the threads that shared libraries such as
  // OpenBLAS start before main.)
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "fedtail-client: pipe: %s\n", std::strerror(errno));
    return 1;
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  Status logging = init_logging("fedtail-client", flags.log_level);
  if (!logging.ok()) {
    std::fprintf(stderr, "fedtail-client: %s\n", logging.message().c_str());
    return 2;
  }
  Result<Setup> setup = make_setup(flags);
  if (!setup.ok()) {
    spdlog::error("{}", setup.status().message());
    return 1;
  }
  strategies::register_builtin_strategies();
  for (const std::string& plugin : flags.plugins) {
    Status loaded = strategies::load_plugin(plugin);
    if (!loaded.ok()) {
      spdlog::error("--plugin {}: {}", plugin, loaded.message());
      return 1;
    }
  }

  Result<std::unique_ptr<Connection>> connection = Connection::create(setup->connection);
  if (!connection.ok()) {
    spdlog::error("{}", connection.status().message());
    return 1;
  }
  StateStore store(setup->state_dir);
  TaskRunner runner(setup->runner, connection->get(), &store);

  const char* security = !flags.tls_cert.empty() ? "mutual TLS"
                         : !flags.tls_ca.empty() ? "TLS"
                                                 : "plaintext";
  spdlog::info("fedtail-client {}: {} ({} client{}) -> coordinator {} ({}); state in {}",
               FEDTAIL_VERSION, setup->connection.client_id, setup->runner.clients.size(),
               setup->runner.clients.size() == 1 ? "" : "s", flags.coordinator, security,
               setup->state_dir.empty() ? "memory only" : setup->state_dir);

  std::atomic<bool> done{false};
  Connection* conn = connection->get();
  std::thread signal_thread([&done, conn, &runner] {
    int received = 0;
    while (!done.load()) {
      pollfd fd{g_signal_pipe[0], POLLIN, 0};
      if (::poll(&fd, 1, /*timeout_ms=*/200) <= 0) continue;
      unsigned char sig = 0;
      if (::read(g_signal_pipe[0], &sig, 1) != 1) continue;
      if (++received == 1) {
        spdlog::warn("received {}: abandoning the current task and leaving", strsignal(sig));
        conn->request_stop();
        runner.request_stop();
      } else {
        spdlog::error("received {} again: exiting now", strsignal(sig));
        spdlog::default_logger()->flush();
        std::_Exit(1);
      }
    }
  });

  Result<LoopEnd> end = run_client_loop(*conn, runner);
  int exit_code = 0;
  if (end.ok() && *end == LoopEnd::kShutdown) {
    spdlog::info("done");
  } else {
    std::string reason =
        end.ok() ? "stopped by a signal" : "client error: " + end.status().message();
    if (!end.ok()) {
      spdlog::error("{}", end.status().message());
      exit_code = 1;
    }
    Status left = conn->leave(reason);
    if (!left.ok())
      spdlog::warn("could not tell the coordinator that this client leaves ({})", left.message());
    if (!runner.wait_for_worker(kWorkerGraceMs)) {
      spdlog::warn("the abandoned task is still running; exiting without waiting for it");
      spdlog::default_logger()->flush();
      std::_Exit(exit_code);
    }
  }
  done.store(true);
  signal_thread.join();
  return exit_code;
}

}  // namespace
}  // namespace fedtail::client

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  fedtail::client::Flags flags;
  CLI::App app{
      "fedtail-client: a federated-learning client. Dials out to a fedtail coordinator, long-polls "
      "for tasks, trains or evaluates on its local share of the data, and uploads the results."};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  app.add_option("--coordinator", flags.coordinator, "the coordinator's HOST:PORT")->required();
  app.add_option(
      "--config", flags.config,
      "client.json: {client_id, partition, data_root, model_path, threads, state_dir} (optional "
      "with --clients)");
  app.add_option("--clients", flags.clients,
                 "host virtual clients A..B (ids client-A .. client-B) instead of one client");
  app.add_option("--device", flags.device, "auto, cpu, cuda or cuda:i (default: the run config's)");
  app.add_option("--tls-ca", flags.tls_ca,
                 "PEM root certificate that the coordinator's must chain to");
  app.add_option("--tls-cert", flags.tls_cert,
                 "PEM client certificate (mutual TLS; CN = client id)");
  app.add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  auto* token = app.add_option("--token", flags.token,
                               "join token (ft1.*; visible to other users in /proc: prefer "
                               "--token-file)");
  auto* token_file =
      app.add_option("--token-file", flags.token_file,
                     "file holding the join token (`fedtail-certs token` prints it)");
  auto* token_secret = app.add_option(
      "--token-secret-file", flags.token_secret_file,
      "the coordinator's join-token secret: derive the tokens here (for simulation workers "
      "hosting --clients, whose virtual clients each need one)");
  app.add_option("--federation", flags.federation,
                 "the coordinator's --federation, named by the tokens made from "
                 "--token-secret-file (each valid for a day)")
      ->capture_default_str();
  token->excludes(token_file);
  token->excludes(token_secret);
  token_file->excludes(token_secret);
  app.add_option(
      "--state-dir", flags.state_dir,
      "directory of the per-client state files (default ./fedtail-client-state; :memory: keeps "
      "state in memory only)");
  app.add_flag("--insecure", flags.insecure,
               "allow a plaintext connection to a non-loopback coordinator");
  app.add_option("--plugin", flags.plugins, "strategy plugin (shared library); repeatable");
  app.add_option("--threads", flags.threads, "LibTorch threads (default: the run config's)");
  app.add_option("--retry-timeout", flags.retry_timeout_s,
                 "seconds to keep retrying an unreachable coordinator before exiting (0 = forever)")
      ->capture_default_str();
  app.add_option("--data-root", flags.data_root,
                 "where the dataset's files are on this machine (default: client.json's data_root, "
                 "else the dataset's default location); the coordinator's config.data.root is "
                 "ignored");
  app.add_option("--model-path", flags.model_path,
                 "this machine's copy of the run's TorchScript model (config.model.arch "
                 "\"torchscript\"; default: client.json's model_path, else the run config's "
                 "model.path); checked against the coordinator's digest and tensor layout");
  app.add_option("--max-bundle-bytes", flags.max_bundle_bytes,
                 "largest task bundle (model) accepted from the coordinator, in bytes; a bigger "
                 "task is refused")
      ->capture_default_str();
  app.add_option("--attack", flags.attack,
                 "red-team mode for robustness benchmarks: train honestly, then upload a hostile "
                 "update: sign_flip[:s], scale:S, noise:SIGMA or overclaim:N (see README, "
                 "\"Robust aggregation\")");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn, error or off")
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
    std::fprintf(stderr, "fedtail-client: %s (see --help)\n", e.what());
    return 2;
  }
  return fedtail::client::run(flags);
}
