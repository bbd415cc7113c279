#include "tools/bench/loopback_federation.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "client/connection.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"
#include "strategies/weighted_average.h"

namespace fedtail::bench {

using SteadyTime = std::chrono::steady_clock::time_point;

// The benchmark strategy (see the header). The engine calls it from its thread, except
// Aggregation::add (one upload at a time, under the engine's fold lock); times_ is guarded by mu_
// because round_seconds() reads it from the owner's thread.
class BenchStrategy final : public strategies::ServerStrategy {
 public:
  BenchStrategy(std::shared_ptr<const TensorBundle> global, bool average)
      : global_(std::move(global)), average_(average) {}

  Status initialize(const strategies::RunContext& /*run*/, Rng& /*rng*/) override {
    return Status::OK();
  }

  Result<std::vector<strategies::TaskSpec>> configure_fit(
      int /*round*/, const std::vector<strategies::ClientInfo>& available, Rng& /*rng*/) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = std::chrono::steady_clock::now();
    }
    std::vector<strategies::TaskSpec> specs;
    for (const auto& client : available) specs.push_back({client.id, {}, global_, nullptr});
    return specs;
  }

  Result<std::unique_ptr<strategies::Aggregation>> begin_aggregation(int /*round*/) override {
    std::unique_ptr<Fold> fold(new Fold(this));
    if (average_) {
      FEDTAIL_ASSIGN_OR_RETURN(strategies::WeightedAverage average,
                               strategies::WeightedAverage::create(global_));
      fold->average = std::make_unique<strategies::WeightedAverage>(std::move(average));
    }
    return std::unique_ptr<strategies::Aggregation>(std::move(fold));
  }

  Result<std::vector<strategies::TaskSpec>> configure_evaluate(
      int /*round*/, const std::vector<strategies::ClientInfo>& /*available*/,
      Rng& /*rng*/) override {
    return std::vector<strategies::TaskSpec>{};
  }
  Result<nlohmann::json> aggregate_evaluate(
      int /*round*/, const std::vector<strategies::EvalReport>& /*reports*/,
      const std::vector<strategies::ClientFailure>& /*failures*/) override {
    return nlohmann::json::object();
  }
  Result<nlohmann::json> evaluate(int /*round*/,
                                  const strategies::ServerEvalContext& /*context*/) override {
    return nlohmann::json::object();
  }
  std::shared_ptr<const TensorBundle> global_bundle() const override { return global_; }
  Result<TensorBundle> save_state() const override {
    return Status::FailedPrecondition("bench strategy: no checkpoints");
  }
  Status load_state(TensorBundle /*state*/) override {
    return Status::FailedPrecondition("bench strategy: no checkpoints");
  }

  std::vector<double> round_seconds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seconds_;
  }

 private:
  struct Fold final : public strategies::Aggregation {
    explicit Fold(BenchStrategy* owner) : owner(owner) {}
    Status add(strategies::ClientUpdate update) override {
      if (average) FEDTAIL_RETURN_IF_ERROR(average->add(update.bundle, update.num_examples));
      ++updates;
      return Status::OK();
    }
    Result<nlohmann::json> finish(const std::vector<strategies::ClientFailure>& failures) override {
      if (average && average->updates() > 0) {
        FEDTAIL_ASSIGN_OR_RETURN(TensorBundle mean, average->finish());
        owner->global_ = std::make_shared<const TensorBundle>(std::move(mean));
      }
      std::lock_guard<std::mutex> lock(owner->mu_);
      owner->seconds_.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - owner->started_)
              .count());
      return nlohmann::json{{"updates", updates}, {"failures", failures.size()}};
    }
    BenchStrategy* owner;
    std::unique_ptr<strategies::WeightedAverage> average;
    int64_t updates = 0;
  };

  std::shared_ptr<const TensorBundle> global_;  // engine thread only
  const bool average_;
  mutable std::mutex mu_;
  SteadyTime started_;           // guarded by mu_
  std::vector<double> seconds_;  // guarded by mu_
};

Result<std::unique_ptr<LoopbackFederation>> LoopbackFederation::start(
    const LoopbackOptions& options) {
  if (options.rounds < 1 || options.clients < 1 || options.floats < 1) {
    return Status::InvalidArgument("loopback federation: rounds, clients and floats must be >= 1");
  }
  std::unique_ptr<LoopbackFederation> f(new LoopbackFederation());
  TensorBundle model;
  // Tensors of at most kTensorFloats (4 MB), as models are made of: ResNet-18's largest is 9.4 MB.
  constexpr int64_t kTensorFloats = 1 << 20;
  for (int64_t done = 0, i = 0; done < options.floats; done += kTensorFloats, ++i) {
    const int64_t n = std::min(kTensorFloats, options.floats - done);
    FEDTAIL_RETURN_IF_ERROR(
        model.add_zeros("w" + std::to_string(i), DType::kFloat32, {n}).status());
  }
  const uint64_t payload = model.payload_bytes();
  f->strategy_ = std::make_unique<BenchStrategy>(
      std::make_shared<const TensorBundle>(std::move(model)), options.average);

  coordinator::CoordinatorOptions coordinator_options;
  coordinator_options.rounds = options.rounds;
  coordinator_options.strategy_name = "bench";
  coordinator::FederationOptions& federation = coordinator_options.federation;
  federation.min_available_clients = options.clients;
  federation.round_timeout_s = 600;
  federation.poll_timeout_ms = 2000;
  federation.heartbeat_interval_ms = 5000;
  federation.client_timeout_s = 120;
  federation.max_update_bytes = std::max<uint64_t>(federation.max_update_bytes, payload + 1);
  federation.max_concurrent_uploads = options.max_concurrent_uploads;
  federation.server_eval = false;

  f->run_config_.seed = 1;
  f->registry_ = std::make_unique<coordinator::ClientRegistry>(
      std::chrono::milliseconds(static_cast<int64_t>(federation.client_timeout_s * 1000)));
  coordinator::EngineConfig engine_config;
  engine_config.options = coordinator_options;
  engine_config.run_config = &f->run_config_;
  engine_config.run_id = "bench";
  f->engine_ = std::make_unique<coordinator::RoundEngine>(std::move(engine_config),
                                                          f->strategy_.get(), f->registry_.get());

  coordinator::ServiceOptions service_options;
  service_options.run_id = "bench";
  service_options.run_config_json = "{}";
  service_options.federation = federation;
  f->service_ = std::make_unique<coordinator::FederationService>(
      std::move(service_options), f->registry_.get(), f->engine_.get());

  // As the coordinator builds its server (coordinator/coordinator.cc), minus TLS.
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(f->service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  f->server_ = builder.BuildAndStart();
  if (!f->server_ || port == 0) {
    return Status::Unavailable("loopback federation: cannot listen on 127.0.0.1");
  }
  f->target_ = "127.0.0.1:" + std::to_string(port);
  FEDTAIL_RETURN_IF_ERROR(f->engine_->start());
  return f;
}

LoopbackFederation::~LoopbackFederation() {
  if (engine_) engine_->request_stop();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (engine_) (void)engine_->wait();
}

Status LoopbackFederation::wait() {
  Status status = engine_->wait();
  if (status.ok()) (void)engine_->wait_sessions_shut_down(std::chrono::seconds(10));
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return status;
}

void LoopbackFederation::stop() { engine_->request_stop(); }

std::vector<double> LoopbackFederation::round_seconds() const { return strategy_->round_seconds(); }

Result<ClientTimings> run_bench_client(const std::string& target, const std::string& client_id) {
  client::ConnectionOptions options;
  options.target = target;
  options.client_id = client_id;
  options.retry_timeout_s = 60;
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<client::Connection> connection,
                           client::Connection::create(options));
  v1::JoinRequest request;
  request.set_num_examples(1);
  request.set_model_family("bench");
  connection->set_join_request(request);
  FEDTAIL_RETURN_IF_ERROR(connection->join().status());

  ClientTimings timings;
  const TensorBundle empty;
  for (;;) {
    const auto pull_start = std::chrono::steady_clock::now();
    FEDTAIL_ASSIGN_OR_RETURN(client::PulledTask task, connection->pull_task(2000));
    const double pull_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - pull_start).count();
    const v1::TaskHeader& header = task.header;
    if (header.kind() == v1::TASK_KIND_WAIT) continue;
    if (header.kind() == v1::TASK_KIND_SHUTDOWN) {
      (void)connection->leave("benchmark done");
      return timings;
    }
    FEDTAIL_RETURN_IF_ERROR(task.bundle_status);
    const bool fit = header.kind() == v1::TASK_KIND_FIT;
    if (fit) timings.pull_seconds.push_back(pull_seconds);
    v1::ResultHeader result;
    result.set_task_id(header.task_id());
    result.set_client_id(header.client_id());
    result.set_ok(true);
    result.set_num_examples(1);
    result.set_metrics_json("{}");
    const auto push_start = std::chrono::steady_clock::now();
    FEDTAIL_ASSIGN_OR_RETURN(v1::PushResultResponse response,
                             connection->push_result(result, fit ? task.bundle : empty, 0));
    if (fit) {
      timings.push_seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - push_start).count());
    }
    if (!response.accepted()) {
      return Status::Internal(client_id + ": the coordinator refused task " + header.task_id() +
                              ": " + response.reason());
    }
  }
}

}  // namespace fedtail::bench
