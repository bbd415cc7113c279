#include "coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>

#include "common/base/json_reader.h"
#include "common/learning/config_sections.h"
#include "common/learning/device.h"
#include "common/learning/torchscript_model.h"
#include "common/wire/bundle_file.h"
#include "coordinator/checkpoint.h"
#include "coordinator/live_feed.h"
#include "coordinator/summary.h"
#include "strategies/registry.h"

namespace fedtail::coordinator {
namespace {

// The largest message the server reads (gRPC refuses larger ones before any handler runs).
constexpr int kMaxReceiveMessageBytes = 4 << 20;
// Concurrent calls per connection (a client uses 2-3; a simulation worker the same).
constexpr int kMaxConcurrentStreams = 32;

// Longest wait after the last round for connected clients to collect their SHUTDOWN.
constexpr std::chrono::seconds kShutdownGraceCap{30};

// "host:port" with the port replaced.
std::string with_port(const std::string& listen, int port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return listen + ":" + std::to_string(port);
  return listen.substr(0, colon + 1) + std::to_string(port);
}

}  // namespace

Coordinator::Coordinator(CoordinatorFlags flags) : flags_(std::move(flags)) {}

Coordinator::~Coordinator() {
  // First: the LiveStatus's probe reads the engine and the registry.
  end_live_run(Status::Unavailable("the coordinator closed before the run ended"));
  request_stop();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (engine_) (void)engine_->wait();
}

Result<std::unique_ptr<Coordinator>> Coordinator::create(CoordinatorFlags flags) {
  std::unique_ptr<Coordinator> coordinator(new Coordinator(std::move(flags)));
  FEDTAIL_RETURN_IF_ERROR(coordinator->init());
  return coordinator;
}

std::string Coordinator::state_path(const char* name) const {
  return (std::filesystem::path(flags_.state_dir) / name).string();
}

double Coordinator::wall_seconds() const {
  return wall_seconds_before_ +
         std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

Status Coordinator::init() {
  if (flags_.config_path.empty()) return Status::InvalidArgument("--config: required");
  // The config: the file's JSON with --rounds applied is what clients get and what a resume must
  // match.
  FEDTAIL_ASSIGN_OR_RETURN(config_json_, load_json_file(flags_.config_path));
  if (flags_.rounds < 0) {
    return Status::InvalidArgument("--rounds: must be >= 1 (got " + std::to_string(flags_.rounds) +
                                   ")");
  }
  if (flags_.rounds > 0 && config_json_.is_object()) config_json_["rounds"] = flags_.rounds;
  {
    Result<RunConfig> parsed = parse_run_config(config_json_, coordinator_config_sections());
    if (!parsed.ok()) return parsed.status().with_context(flags_.config_path);
    run_config_ = std::move(parsed).value();
  }
  {
    Result<CoordinatorOptions> parsed = parse_coordinator_options(run_config_.extra);
    if (!parsed.ok()) return parsed.status().with_context(flags_.config_path);
    options_ = std::move(parsed).value();
    // config.devices' traces are read from beside the config file when given relative.
    const std::filesystem::path config_dir =
        std::filesystem::absolute(flags_.config_path).parent_path();
    for (std::string* trace : {&options_.devices.trace, &options_.devices.availability_trace}) {
      if (!trace->empty() && std::filesystem::path(*trace).is_relative()) {
        *trace = (config_dir / *trace).string();
      }
    }
  }
  config_sha256_ = config_digest(config_json_);

  // LibTorch and the evaluation device.
  set_num_threads(flags_.threads >= 0 ? flags_.threads : run_config_.threads);
  {
    const std::string spec = flags_.device.empty() ? run_config_.device : flags_.device;
    Result<torch::Device> device = parse_device(spec);
    if (!device.ok()) {
      return device.status().with_context(flags_.device.empty() ? "config.device" : "--device");
    }
    device_ = *device;
  }

  // Transport security.
  const bool loopback = is_loopback_address(flags_.listen);
  FEDTAIL_ASSIGN_OR_RETURN(credentials_,
                           make_server_credentials(flags_.tls, loopback || flags_.insecure));
  if (!flags_.token_secret_file.empty()) {
    FEDTAIL_ASSIGN_OR_RETURN(token_secret_, read_secret_file(flags_.token_secret_file));
    TokenPolicyOptions token_options;
    token_options.secret = token_secret_;
    token_options.federation = flags_.federation;
    token_options.revocation_file = flags_.token_revocation_file;
    FEDTAIL_ASSIGN_OR_RETURN(tokens_, TokenPolicy::create(std::move(token_options)));
  } else if (!flags_.token_revocation_file.empty()) {
    return Status::InvalidArgument(
        "--token-revocation-file: join tokens are not checked without --token-secret-file");
  }
  const bool tls = !flags_.tls.cert.empty();
  if (!tls && !loopback) {
    spdlog::warn("--insecure: plaintext on the non-loopback address {}", flags_.listen);
  }
  if (flags_.tls.ca.empty() && token_secret_.empty() && !loopback) {
    // Anyone who reaches the port could join under any id and send updates.
    if (!flags_.allow_unauthenticated_clients) {
      return Status::FailedPrecondition(
          "--listen " + flags_.listen +
          ": clients would not be authenticated (any host that reaches the port could join "
          "under any id); give --tls-client-ca (mutual TLS) or --token-secret-file (join "
          "tokens), or --allow-unauthenticated-clients to accept that");
    }
    spdlog::warn(
        "clients are not authenticated (--allow-unauthenticated-clients): anyone who "
        "reaches {} can join",
        flags_.listen);
  }

  // The strategy (config.strategy without "name").
  {
    Result<std::unique_ptr<strategies::ServerStrategy>> strategy =
        strategies::make_server_strategy(options_.strategy_name, options_.strategy_config);
    if (!strategy.ok()) return strategy.status().with_context(flags_.config_path);
    strategy_ = std::move(strategy).value();
  }

  // The data: every process derives the same sets from (config.data, seed). The coordinator needs
  // the class counts (strategies' run context), the image shape (model options) and the balanced
  // test set (server-side evaluation).
  spdlog::info("building the data set ({}) ...", run_config_.data.dataset);
  {
    Result<FederatedData> data = build_federated_data(run_config_.data, run_config_.seed);
    if (!data.ok()) return data.status().with_context("config.data");
    data_ = std::move(data).value();
  }
  FEDTAIL_RETURN_IF_ERROR(
      fill_model_options_from_data(data_.train, &run_config_.model).with_context("config.model"));
  if (run_config_.model.arch == kTorchScriptArch) {
    // A user's module: clients get its digest and tensor layout, and check their copy against
    // them; a resume with another module file meets a changed config.
    Status pinned = pin_torchscript_model(&run_config_.model);
    if (!pinned.ok()) return pinned.with_context(flags_.config_path + ": config");
    nlohmann::json& model = config_json_["model"];
    model["sha256"] = run_config_.model.sha256;
    model["layout"] = nlohmann::json::array();
    for (const TensorLayout& t : run_config_.model.layout) {
      model["layout"].push_back({t.name, t.dtype, t.shape});
    }
    config_sha256_ = config_digest(config_json_);
    spdlog::info("TorchScript model {}: sha256 {}, {} tensors", run_config_.model.path,
                 run_config_.model.sha256, run_config_.model.layout.size());
  }

  return prepare_state_dir();
}

Status Coordinator::prepare_state_dir() {
  std::error_code ec;
  // Mode 0700: the directory holds the checkpoint key (an existing open one is tightened).
  FEDTAIL_RETURN_IF_ERROR(prepare_state_directory(flags_.state_dir).with_context("--state-dir"));
  const std::string checkpoint_path = state_path(kCheckpointFile);
  const bool has_checkpoint = std::filesystem::exists(checkpoint_path, ec);
  if (flags_.resume && has_checkpoint) {
    FEDTAIL_ASSIGN_OR_RETURN(Checkpoint checkpoint, read_checkpoint(checkpoint_path));
    const CheckpointInfo& info = checkpoint.info;
    if (info.config_sha256 != config_sha256_) {
      return Status::FailedPrecondition(
          "--resume: " + flags_.config_path + " (with the flags that change it, e.g. --rounds) " +
          "differs from the config the checkpoint in " + flags_.state_dir +
          " was written with (sha256 " + config_sha256_.substr(0, 12) + "... vs " +
          info.config_sha256.substr(0, 12) +
          "...); resume with the same config, or use another --state-dir");
    }
    if (info.strategy != options_.strategy_name) {
      return Status::FailedPrecondition("--resume: the checkpoint is of strategy \"" +
                                        info.strategy + "\", the config names \"" +
                                        options_.strategy_name + "\"");
    }
    FEDTAIL_RETURN_IF_ERROR(truncate_metrics_lines(state_path(kMetricsFile), info.metrics_lines));
    {
      // The engine goes on from the last kept metrics line: the simulated clock ("sim_time_s"),
      // the asynchronous task count, and the DP accountant's state (the last "privacy" object).
      FEDTAIL_ASSIGN_OR_RETURN(std::vector<nlohmann::json> lines,
                               read_metrics_lines(state_path(kMetricsFile)));
      if (!lines.empty() && lines.back().is_object()) resume_line_ = lines.back();
      for (auto it = lines.rbegin(); options_.privacy.enabled() && it != lines.rend(); ++it) {
        if (it->is_object() && it->contains("privacy")) {
          privacy_state_ = (*it)["privacy"];
          break;
        }
      }
    }
    Status loaded = strategy_->load_state(std::move(checkpoint.state));
    if (!loaded.ok()) return loaded.with_context(checkpoint_path + ": strategy state");
    run_id_ = info.run_id;
    first_round_ = info.round + 1;
    rounds_completed_ = info.round;
    metrics_lines_ = info.metrics_lines;
    wall_seconds_before_ = info.wall_seconds;
    resumed_ = true;
    spdlog::info("resuming run {} after round {} of {} (from {})", run_id_, info.round,
                 options_.rounds, checkpoint_path);
    return Status::OK();
  }
  if (has_checkpoint) {
    Result<Checkpoint> existing = read_checkpoint(checkpoint_path);
    std::string what = existing.ok() ? " (run " + existing->info.run_id + ", round " +
                                           std::to_string(existing->info.round) + ")"
                                     : "";
    return Status::FailedPrecondition("--state-dir: " + flags_.state_dir +
                                      " already holds a checkpoint" + what +
                                      ": pass --resume to continue it, or choose another "
                                      "--state-dir");
  }
  if (flags_.resume) {
    spdlog::warn("--resume: no checkpoint in {}; starting a new run", flags_.state_dir);
  }
  // A new run: outputs of an unfinished earlier attempt (no checkpoint) are stale.
  for (const char* name : {kMetricsFile, kSummaryFile, kFinalModelFile}) {
    std::filesystem::remove(state_path(name), ec);
  }
  run_id_ = random_token(8);
  // The key that authenticates this run's checkpoints, created now (0600) rather than at the
  // first checkpoint, so that a state directory that cannot hold it fails before round 1.
  Result<std::string> key = load_or_create_checkpoint_key(flags_.state_dir);
  if (!key.ok()) return key.status().with_context("--state-dir");
  return Status::OK();
}

Status Coordinator::start() {
  if (server_) return Status::FailedPrecondition("coordinator: already started");
  registry_ = std::make_unique<ClientRegistry>(
      std::chrono::milliseconds(static_cast<int64_t>(options_.federation.client_timeout_s * 1000)));

  EngineConfig engine_config;
  engine_config.options = options_;
  engine_config.run_config = &run_config_;
  engine_config.run_id = run_id_;
  engine_config.num_classes = data_.num_classes();
  engine_config.train_class_counts = data_.train_class_counts;
  engine_config.server_test = options_.federation.server_eval ? &data_.test : nullptr;
  engine_config.auxiliary = data_.auxiliary.size() > 0 ? &data_.auxiliary : nullptr;
  engine_config.device = device_;
  engine_config.first_round = first_round_;
  engine_config.resumed = resumed_;
  engine_config.privacy_state = privacy_state_;
  engine_config.resume_line = resume_line_;
  if (options_.devices.enabled) {
    FEDTAIL_ASSIGN_OR_RETURN(engine_config.devices,
                             DeviceModel::create(options_.devices, run_config_.seed));
  }
  engine_config.on_round_end = [this](int round, const nlohmann::json& line,
                                      const strategies::ServerStrategy& strategy) {
    return on_round_end(round, line, strategy);
  };
  engine_ =
      std::make_unique<RoundEngine>(std::move(engine_config), strategy_.get(), registry_.get());
  if (on_done_) engine_->set_on_done(on_done_);

  ServiceOptions service_options;
  service_options.run_id = run_id_;
  service_options.run_config_json = config_json_.dump();
  service_options.federation = options_.federation;
  service_options.mutual_tls = !flags_.tls.ca.empty();
  service_options.token_secret = token_secret_;
  service_options.tokens = tokens_;
  service_ = std::make_unique<FederationService>(std::move(service_options), registry_.get(),
                                                 engine_.get());

  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(flags_.listen, credentials_, &selected_port);
  builder.RegisterService(service_.get());
  // Bundle chunks are 1 MiB; a ResultHeader carries at most 1 MiB of metrics; a Join a few KiB per
  // hosted client. Each handler bounds its own request further (coordinator/service.cc).
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  builder.SetMaxSendMessageSize(64 << 20);
  // No connection may open unbounded concurrent calls (an honest client has two or three).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
  // Detect dead peers (half-open connections) and tolerate clients' keepalive pings.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  // Pings more often than that (with no data) are strikes; after a few, the connection is closed.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 3);
  server_ = builder.BuildAndStart();
  if (!server_ || selected_port == 0) {
    server_.reset();
    return Status::Unavailable("--listen: cannot listen on " + flags_.listen);
  }
  port_ = selected_port;
  address_ = with_port(flags_.listen, port_);
  FEDTAIL_RETURN_IF_ERROR(write_file_atomic(state_path(kPortFile), std::to_string(port_) + "\n"));
  const char* security = flags_.tls.cert.empty() ? "plaintext"
                         : flags_.tls.ca.empty() ? "TLS"
                                                 : "mutual TLS";
  spdlog::info("listening on {} ({}{}); run {}: {} round(s) of {}, state in {}", address_, security,
               token_secret_.empty() ? "" : ", join tokens", run_id_, options_.rounds,
               options_.strategy_name, flags_.state_dir);
  started_ = std::chrono::steady_clock::now();
  if (flags_.live) {
    std::vector<nlohmann::json> earlier;  // a resumed run's lines so far
    if (resumed_) {
      Result<std::vector<nlohmann::json>> lines = read_metrics_lines(state_path(kMetricsFile));
      if (lines.ok()) earlier = std::move(lines).value();
    }
    flags_.live->begin_run({run_id_, options_.strategy_name, flags_.live_label, options_.rounds},
                           std::move(earlier));
    flags_.live->set_probe([this] { return probe_live_state(*engine_, *registry_); });
    live_begun_ = true;
  }
  return engine_->start();
}

Status Coordinator::on_round_end(int round, const nlohmann::json& line,
                                 const strategies::ServerStrategy& strategy) {
  nlohmann::json record = line;
  const double wall = wall_seconds();
  record["wall_seconds"] = wall;
  // The metrics line first (fsynced), then the checkpoint that counts it: a crash in between
  // leaves one line that --resume cuts off.
  FEDTAIL_RETURN_IF_ERROR(append_metrics_line(state_path(kMetricsFile), record));
  ++metrics_lines_;
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle state, strategy.save_state());
  CheckpointInfo info;
  info.round = round;
  info.run_id = run_id_;
  info.config_sha256 = config_sha256_;
  info.metrics_lines = metrics_lines_;
  info.wall_seconds = wall;
  info.strategy = options_.strategy_name;
  FEDTAIL_RETURN_IF_ERROR(write_checkpoint(state_path(kCheckpointFile), info, std::move(state)));
  rounds_completed_ = round;
  if (flags_.live) flags_.live->add_round(record);
  if (on_round_) on_round_(record);
  return Status::OK();
}

Status Coordinator::write_outputs() {
  std::shared_ptr<const TensorBundle> global = strategy_->global_bundle();
  if (global) {
    FEDTAIL_RETURN_IF_ERROR(write_bundle_file(state_path(kFinalModelFile), *global));
  } else {
    spdlog::warn("strategy {} has no global model: no {}", options_.strategy_name, kFinalModelFile);
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<nlohmann::json> lines,
                           read_metrics_lines(state_path(kMetricsFile)));
  SummaryInput input;
  input.strategy = options_.strategy_name;
  input.run_id = run_id_;
  input.rounds_planned = options_.rounds;
  input.rounds_completed = rounds_completed_;
  input.wall_seconds = wall_seconds();
  input.mask_absent_classes = run_config_.eval.mask_absent_classes;
  nlohmann::json summary = make_summary(input, lines);
  FEDTAIL_RETURN_IF_ERROR(write_file_atomic(
      state_path(kSummaryFile),
      summary.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"));
  spdlog::info("wrote {} and {}", state_path(kSummaryFile), state_path(kFinalModelFile));
  return Status::OK();
}

Status Coordinator::wait() {
  if (!engine_) return Status::FailedPrecondition("coordinator: not started");
  Status status = engine_->wait();
  if (status.ok()) {
    status = write_outputs();
    end_live_run(status);  // before waiting for the clients' SHUTDOWN
    const auto grace = std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(options_.federation.poll_timeout_ms) + std::chrono::seconds(2),
        kShutdownGraceCap);
    if (!engine_->wait_sessions_shut_down(grace)) {
      spdlog::warn("some clients did not collect their SHUTDOWN within {} ms", grace.count());
    }
  } else if (status.code() == StatusCode::kUnavailable && rounds_completed_ > 0) {
    spdlog::warn("run {} {}; the checkpoint of round {} in {} stays valid (--resume)", run_id_,
                 status.message(), rounds_completed_, flags_.state_dir);
  } else if (rounds_completed_ > 0) {
    // A failure (e.g. a full disk at checkpoint time): the last checkpoint written is intact.
    spdlog::warn(
        "run {} failed in round {}; the checkpoint of round {} in {} is intact: fix the "
        "cause (the error that follows) and rerun with --resume",
        run_id_, rounds_completed_ + 1, rounds_completed_, flags_.state_dir);
  } else if (status.code() == StatusCode::kUnavailable) {
    spdlog::warn("run {} {}: no round completed, nothing to resume", run_id_, status.message());
  }
  end_live_run(status);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return status;
}

void Coordinator::end_live_run(const Status& status) {
  if (!flags_.live || !live_begun_) return;
  if (status.ok()) {
    flags_.live->end_run(LiveRunState::kFinished);
  } else {
    // kUnavailable: request_stop (a signal), or the coordinator closed before the end.
    flags_.live->end_run(
        status.code() == StatusCode::kUnavailable ? LiveRunState::kStopped : LiveRunState::kFailed,
        status.message());
  }
}

void Coordinator::set_min_available_clients(int n) {
  if (engine_) engine_->set_min_available_clients(n);
}

void Coordinator::request_stop() {
  if (engine_) engine_->request_stop();
}

}  // namespace fedtail::coordinator
