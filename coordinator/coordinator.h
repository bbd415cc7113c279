// Coordinator: one federated run, wired together — run config, data (for the strategy's run context
// and server-side evaluation), strategy, client registry, round engine, gRPC server, state
// directory (metrics.jsonl, checkpoint.bundle, final_model.bundle, summary.json, port).
// fedtail-coordinator's main() is flag parsing and signal handling around this class; the
// simulation harness runs it in-process.
//
// Lifecycle: create() -> start() -> wait(); request_stop() from any thread ends the run early (the
// checkpoint of the last finished round stays valid, and no SHUTDOWN is sent, so clients wait for a
// resumed coordinator). Destruction stops the server before the engine. Not copyable.
#ifndef FEDTAIL_COORDINATOR_COORDINATOR_H_
#define FEDTAIL_COORDINATOR_COORDINATOR_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/base/status.h"
#include "common/data/federated_data.h"
#include "common/learning/run_config.h"
#include "common/security/join_token.h"
#include "common/security/tls.h"
#include "coordinator/client_registry.h"
#include "coordinator/live_status.h"
#include "coordinator/options.h"
#include "coordinator/round_engine.h"
#include "coordinator/service.h"
#include "coordinator/token_policy.h"
#include "strategies/strategy.h"

namespace fedtail::coordinator {

struct CoordinatorFlags {
  std::string config_path;                 // the run config (JSON). Required.
  std::string listen = "127.0.0.1:50051";  // HOST:PORT; port 0 picks a free port
  TlsFiles tls;                            // cert + key: TLS; + ca (--tls-client-ca): mutual TLS
  std::string token_secret_file;           // join-token secret; "" = no token check
  std::string federation = kDefaultFederation;  // join tokens must be issued for this federation
  std::string token_revocation_file;  // revoked client ids / token MACs; "" = none (TokenPolicy)
  std::string state_dir = "./fedtail-state";
  // Continue from <state_dir>/checkpoint.bundle; without one (killed before round 1 ended), start a
  // new run there, with a warning.
  bool resume = false;
  bool insecure = false;  // allow plaintext on a non-loopback address
  // Off loopback, without --tls-client-ca or --token-secret-file the coordinator refuses to start
  // unless this is set (clients would not be authenticated).
  bool allow_unauthenticated_clients = false;
  std::string device;  // server-side evaluation device; "" = config.device
  int threads = -1;    // LibTorch threads; < 0 = config.threads
  int rounds = 0;      // > 0 overrides config.rounds
  // Fed with the run's progress (begin_run at start(), each metrics line, end_run) for the HTTP
  // dashboard (coordinator/http_dashboard.h); null = none. Shared: it may show several runs.
  std::shared_ptr<LiveStatus> live;
  std::string live_label;  // the run's label on the dashboard, e.g. "fedavg seed 1, run 2/6"
};

class Coordinator {
 public:
  // Loads and validates everything (config, strategy, data, credentials, state directory,
  // checkpoint on --resume) without listening yet. The strategy's registry must hold the
  // configured strategy (register_builtin_strategies / load_plugin first). Errors name the flag,
  // field or file: kInvalidArgument (config), kNotFound (files, unknown strategy),
  // kFailedPrecondition (plaintext refused; a fresh run over an existing checkpoint; a resume
  // with another config), and those of the data loaders.
  static Result<std::unique_ptr<Coordinator>> create(CoordinatorFlags flags);

  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Listens, writes the port to <state_dir>/port, and starts the engine. kUnavailable when the
  // address cannot be bound.
  Status start();
  // The bound port (after start()).
  int port() const { return port_; }
  // The address clients should dial, e.g. "127.0.0.1:43127" (after start()).
  const std::string& address() const { return address_; }

  // Blocks until the run ends. On success writes final_model.bundle and summary.json, waits
  // (briefly) until every connected client has been told SHUTDOWN, and stops the server. Returns
  // the run's status (kUnavailable after request_stop). Called once.
  Status wait();

  // Ends the run early. Thread-safe (call it from a signal-handling thread).
  void request_stop();
  // Called once, on the engine thread, when the run ends (to wake a thread blocked elsewhere).
  // Call before start().
  void set_on_done(std::function<void()> on_done) { on_done_ = std::move(on_done); }
  // Called on the engine thread after each round's metrics line (as written to metrics.jsonl) and
  // checkpoint are on disk; keep it short (progress display). Call before start().
  void set_on_round(std::function<void(const nlohmann::json& line)> on_round) {
    on_round_ = std::move(on_round);
  }
  // Lowers (or raises) the number of connected clients a round waits for, from now on; >= 1.
  // Thread-safe, after start(). A simulation calls it when a worker and its clients are gone.
  void set_min_available_clients(int n);

  const std::string& state_dir() const { return flags_.state_dir; }
  const std::string& run_id() const { return run_id_; }
  const CoordinatorOptions& options() const { return options_; }

 private:
  explicit Coordinator(CoordinatorFlags flags);

  Status init();
  Status prepare_state_dir();
  Status on_round_end(int round, const nlohmann::json& line,
                      const strategies::ServerStrategy& strategy);
  Status write_outputs();
  // Tells flags_.live (if any) how the run ended; only the first call counts.
  void end_live_run(const Status& status);
  std::string state_path(const char* name) const;
  double wall_seconds() const;

  // Constant after create().
  const CoordinatorFlags flags_;
  nlohmann::json config_json_;  // the effective config (with --rounds applied)
  std::string config_sha256_;
  RunConfig run_config_;
  CoordinatorOptions options_;
  FederatedData data_;
  torch::Device device_ = torch::kCPU;
  std::string run_id_;
  std::string token_secret_;
  std::shared_ptr<TokenPolicy> tokens_;  // null without a token secret
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<strategies::ServerStrategy> strategy_;
  int first_round_ = 1;
  bool resumed_ = false;
  nlohmann::json resume_line_;      // on resume: the last kept metrics line (EngineConfig)
  nlohmann::json privacy_state_;    // on resume with config.privacy: the accountant (EngineConfig)
  double wall_seconds_before_ = 0;  // of earlier (resumed) runs
  std::function<void()> on_done_;
  std::function<void(const nlohmann::json&)> on_round_;
  bool live_begun_ = false;  // flags_.live->begin_run was called (start(), owner's thread)

  // Written by the engine thread in on_round_end (one thread), read after wait().
  int64_t metrics_lines_ = 0;
  int rounds_completed_ = 0;

  std::chrono::steady_clock::time_point started_;
  int port_ = 0;
  std::string address_;

  // Destroyed in reverse order: the server first (its reactors use the engine), then the service,
  // the engine and the registry.
  std::unique_ptr<ClientRegistry> registry_;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<FederationService> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_COORDINATOR_H_
