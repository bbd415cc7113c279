// fedtail-coordinator: runs one federated run (docs/architecture.md, "The binaries' contract").
//
//   fedtail-coordinator --config run.json [--listen HOST:PORT] [--tls-cert F --tls-key F
//       [--tls-client-ca F]] [--token-secret-file F [--federation NAME]
//       [--token-revocation-file F]] [--state-dir D] [--resume] [--insecure]
//       [--allow-unauthenticated-clients]
//       [--plugin LIB.so]... [--device D] [--threads N] [--rounds N] [--log-level L]
//       [--http HOST:PORT [--http-token-file F]]
//
// --http serves a live dashboard (/), its JSON (/api/status, /api/metrics) and Prometheus metrics
// (/metrics) on HOST:PORT (coordinator/http_dashboard.h); the bound port also goes to
// <state-dir>/http_port.
//
// Exit status: 0 when every round ran; 128+signal after SIGINT/SIGTERM (the checkpoint of the last
// finished round stays valid: rerun with --resume); 1 on any error (one line naming the flag,
// field or file).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common/base/logging.h"
#include "common/base/malloc_tuning.h"
#include "common/base/signal_watcher.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "coordinator/http_dashboard.h"
#include "coordinator/live_status.h"
#include "strategies/registry.h"

namespace {

constexpr char kProgram[] = "fedtail-coordinator";

struct Flags {
  fedtail::coordinator::CoordinatorFlags coordinator;
  std::vector<std::string> plugins;
  std::string log_level = "info";
  std::string http;             // dashboard address; "" = no dashboard
  std::string http_token_file;  // the dashboard's bearer token; "" = none
};

int run(const Flags& flags) {
  fedtail::strategies::register_builtin_strategies();
  for (const std::string& plugin : flags.plugins) {
    fedtail::Status loaded = fedtail::strategies::load_plugin(plugin);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: --plugin %s: %s\n", kProgram, plugin.c_str(),
                   loaded.message().c_str());
      return 1;
    }
    spdlog::info("loaded plugin {}", plugin);
  }
  fedtail::coordinator::CoordinatorFlags coordinator_flags = flags.coordinator;
  // The dashboard first: a refused --http fails before the data is loaded.
  std::unique_ptr<fedtail::coordinator::HttpDashboard> dashboard;
  if (!flags.http.empty()) {
    coordinator_flags.live = std::make_shared<fedtail::coordinator::LiveStatus>();
    fedtail::Result<std::unique_ptr<fedtail::coordinator::HttpDashboard>> made =
        fedtail::coordinator::HttpDashboard::create(flags.http, flags.http_token_file,
                                                    coordinator_flags.live);
    if (!made.ok()) {
      std::fprintf(stderr, "%s: %s\n", kProgram, made.status().message().c_str());
      return 1;
    }
    dashboard = std::move(made).value();
  }
  fedtail::Result<std::unique_ptr<fedtail::coordinator::Coordinator>> created =
      fedtail::coordinator::Coordinator::create(std::move(coordinator_flags));
  if (!created.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, created.status().message().c_str());
    return 1;
  }
  fedtail::coordinator::Coordinator& coordinator = **created;
  if (dashboard) {
    // Where scripts and tests find the dashboard (--http HOST:0 picks the port).
    const std::string http_port_file = coordinator.state_dir() + "/http_port";
    fedtail::Status written = fedtail::coordinator::write_file_atomic(
        http_port_file, std::to_string(dashboard->port()) + "\n");
    if (!written.ok()) {
      std::fprintf(stderr, "%s: %s\n", kProgram, written.message().c_str());
      return 1;
    }
  }
  fedtail::SignalWatcher watcher([&coordinator] { coordinator.request_stop(); });
  fedtail::Status status = coordinator.start();
  if (status.ok()) status = coordinator.wait();
  if (status.ok()) {
    spdlog::info("done: {} round(s); results in {}", coordinator.options().rounds,
                 coordinator.state_dir());
    return 0;
  }
  if (watcher.signal() != 0) return 128 + watcher.signal();
  spdlog::error("{}", status.to_string());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  Flags flags;
  fedtail::coordinator::CoordinatorFlags& c = flags.coordinator;
  CLI::App app{"fedtail coordinator: runs a federated run's rounds for remote clients"};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  app.add_option("--config", c.config_path, "run config (JSON)")->required();
  app.add_option("--listen", c.listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--tls-cert", c.tls.cert, "server certificate chain (PEM)");
  app.add_option("--tls-key", c.tls.key, "server private key (PEM)");
  app.add_option("--tls-client-ca", c.tls.ca,
                 "CA (PEM) that client certificates must chain to: mutual TLS");
  app.add_option("--token-secret-file", c.token_secret_file,
                 "secret of the join tokens (at least 32 bytes; `fedtail-certs secret` makes one)");
  app.add_option("--federation", c.federation,
                 "this federation's name: join tokens must be issued for it "
                 "(`fedtail-certs token --federation NAME`)")
      ->capture_default_str();
  app.add_option("--token-revocation-file", c.token_revocation_file,
                 "revoked client ids or token MACs, one per line (# comments); re-read when it "
                 "changes (needs --token-secret-file)");
  app.add_option("--state-dir", c.state_dir,
                 "checkpoints, metrics.jsonl, summary.json, final_model.bundle, port")
      ->capture_default_str();
  app.add_flag("--resume", c.resume, "continue from the state directory's checkpoint");
  app.add_flag("--insecure", c.insecure, "allow plaintext on a non-loopback address");
  app.add_flag("--allow-unauthenticated-clients", c.allow_unauthenticated_clients,
               "off loopback, accept clients without --tls-client-ca or --token-secret-file "
               "(anyone who reaches the port can join)");
  app.add_option("--plugin", flags.plugins, "strategy plugin (shared library); repeatable");
  app.add_option("--device", c.device,
                 "server-side evaluation device: auto, cpu, cuda, cuda:i (default: config.device)");
  app.add_option("--threads", c.threads,
                 "LibTorch threads, 0 = all cores (default: config.threads)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--rounds", c.rounds, "override config.rounds")->check(CLI::PositiveNumber);
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn, error, off")
      ->capture_default_str();
  CLI::Option* http =
      app.add_option("--http", flags.http,
                     "serve a live dashboard (/), JSON (/api/status, /api/metrics) and Prometheus "
                     "metrics (/metrics) on HOST:PORT (port 0: any free port, written to "
                     "<state-dir>/http_port); read-only; a non-loopback address needs "
                     "--http-token-file (default: off)");
  app.add_option("--http-token-file", flags.http_token_file,
                 "bearer token the dashboard requires (Authorization: Bearer <token>, or "
                 "?token=<token> for the page); at least 32 bytes (`fedtail-certs secret` makes "
                 "one)")
      ->needs(http);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s (see --help)\n", kProgram, e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 1;
  }
  if (fedtail::Status s = fedtail::init_logging(kProgram, flags.log_level); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, s.message().c_str());
    return 1;
  }
  try {
    return run(flags);
  } catch (const std::exception& e) {
    spdlog::error("unexpected exception: {}", e.what());
  } catch (...) {
    spdlog::error("unexpected non-standard exception");
  }
  return 1;
}
