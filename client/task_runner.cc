#include "client/task_runner.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <exception>
#include <utility>

#include "client/fault_pause.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "common/base/rng.h"
#include "common/wire/tensor_bundle.h"
#include "common/security/tls.h"
#include "strategies/registry.h"

namespace fedtail::client {

namespace {

// A late result is still offered this long after the task's deadline: the coordinator's clock
// decides, and clocks of distinct machines differ.
constexpr uint64_t kPushGraceMs = 60'000;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

const char* kind_name(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_FIT:
      return "fit";
    case v1::TASK_KIND_EVALUATE:
      return "evaluate";
    case v1::TASK_KIND_WAIT:
      return "wait";
    case v1::TASK_KIND_SHUTDOWN:
      return "shutdown";
    default:
      return "unknown";
  }
}

strategies::ClientState clone_state(const strategies::ClientState& state) {
  strategies::ClientState copy;
  copy.tensors = state.tensors.clone();
  copy.values = state.values;
  return copy;
}

}  // namespace

TaskRunner::TaskRunner(TaskRunnerOptions options, Connection* connection, StateStore* store)
    : options_(std::move(options)), connection_(connection), store_(store) {
  FEDTAIL_CHECK(!options_.clients.empty());
}

TaskRunner::~TaskRunner() {
  if (worker_.joinable()) worker_.join();
}

Status TaskRunner::prepare(const v1::JoinResponse& join) {
  if (config_ && join.run_id() == run_id_ && join.run_config_json() == run_config_json_) {
    return Status::OK();
  }
  if (config_) {
    spdlog::info("the coordinator runs a new run ({}; was {}): setting up again", join.run_id(),
                 run_id_);
  }
  config_.reset();
  clients_.clear();
  models_.clear();
  algorithms_.clear();

  nlohmann::json json;
  try {
    json = nlohmann::json::parse(join.run_config_json());
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(
        std::string("the run config sent by the coordinator is not valid "
                    "JSON: ") +
        e.what());
  }
  FEDTAIL_ASSIGN_OR_RETURN(RunConfig config,
                           parse_run_config(json, {"rounds", "strategy", "federation"}));

  // config.strategy: {"name": ..., options...}; the factories get it without "name".
  const nlohmann::json strategy = config.extra.value("strategy", nlohmann::json::object());
  if (!strategy.is_object() || !strategy.contains("name") || !strategy["name"].is_string()) {
    return Status::InvalidArgument(
        "config.strategy.name: missing (the run config names no strategy)");
  }
  std::string strategy_name = strategy["name"].get<std::string>();
  nlohmann::json strategy_config = strategy;
  strategy_config.erase("name");

  uint32_t poll_timeout_ms = 20000;
  const nlohmann::json federation = config.extra.value("federation", nlohmann::json::object());
  if (federation.is_object() && federation.contains("poll_timeout_ms") &&
      federation["poll_timeout_ms"].is_number_unsigned()) {
    poll_timeout_ms = federation["poll_timeout_ms"].get<uint32_t>();
  }

  if (!options_.data_root.empty()) config.data.root = options_.data_root;
  for (const HostedClient& c : options_.clients) {
    if (c.partition >= config.data.clients) {
      return Status::InvalidArgument(
          c.id + ": partition " + std::to_string(c.partition) + " is out of range: the run has " +
          std::to_string(config.data.clients) + " clients (config.data.clients), partitions 0.." +
          std::to_string(config.data.clients - 1));
    }
  }

  const std::string device_spec = options_.device.empty() ? config.device : options_.device;
  Result<torch::Device> device = parse_device(device_spec);
  if (!device.ok()) {
    return device.status().with_context(options_.device.empty() ? "config.device" : "--device");
  }
  set_num_threads(options_.threads > 0 ? options_.threads : config.threads);

  const auto start = std::chrono::steady_clock::now();
  FEDTAIL_ASSIGN_OR_RETURN(FederatedData data, build_federated_data(config.data, config.seed));
  spdlog::info("data ready: {} {} training examples over {} clients, {} classes ({:.1f} s)",
               config.data.dataset, data.train.size(), data.num_clients(), data.num_classes(),
               seconds_since(start));

  std::map<std::string, Client> clients;
  std::map<std::string, Model> models;
  try {
    ModelOptions model_options = config.model;
    FEDTAIL_RETURN_IF_ERROR(fill_model_options_from_data(data.train, &model_options));
    FEDTAIL_RETURN_IF_ERROR(validate_model_options(model_options).with_context("config"));
    for (const HostedClient& c : options_.clients) {
      Client client;
      client.hosted = c;
      // Heterogeneous federations (config.model.groups): partition k uses groups[k % size].
      client.arch = client_model_options(model_options, c.partition).arch;
      client.train = data.client_train_set(c.partition);
      client.test = data.client_test_set(c.partition);
      client.test_rows = data.client_test[c.partition];
      if (models.count(client.arch) == 0) {
        // One model per architecture, shared by the virtual clients that use it. The initial
        // weights do not matter (every task loads its bundle or the client's state first), but
        // they are deterministic all the same.
        Rng rng = model_options.groups.empty()
                      ? Rng::derive(config.seed, "client_model")
                      : Rng::derive(config.seed, "client_model." + client.arch);
        FEDTAIL_ASSIGN_OR_RETURN(Model model,
                                 make_model(client_model_options(model_options, c.partition), rng));
        model->to(*device);
        models.emplace(client.arch, model);
      }
      clients.emplace(c.id, std::move(client));
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("setting up the clients' data and model failed: ") +
                            e.what());
  }

  run_id_ = join.run_id();
  run_config_json_ = join.run_config_json();
  config_ = std::make_unique<RunConfig>(std::move(config));
  strategy_name_ = std::move(strategy_name);
  strategy_config_ = std::move(strategy_config);
  data_ = std::move(data);
  clients_ = std::move(clients);
  models_ = std::move(models);
  test_features_ = clients_.size() > 1 ? std::make_unique<FeatureCache>(&data_.test) : nullptr;
  device_ = *device;
  poll_timeout_ms_ = poll_timeout_ms;
  heartbeat_interval_ms_ = join.heartbeat_interval_ms() > 0 ? join.heartbeat_interval_ms() : 5000;
  max_update_bytes_ = join.max_update_bytes();

  // Fail now, not at the first task, when the strategy is unknown or its options are bad.
  Result<strategies::ClientAlgorithm*> algorithm = algorithm_for(strategy_name_);
  if (!algorithm.ok()) {
    config_.reset();
    return algorithm.status();
  }
  int64_t examples = 0;
  for (const auto& [id, client] : clients_) examples += client.train.size();
  std::string archs;
  for (const auto& [arch, model] : models_) archs += (archs.empty() ? "" : ", ") + arch;
  const HostedClient& first = options_.clients.front();
  const HostedClient& last = options_.clients.back();
  spdlog::info("{}{}: partition{} {}{}, {} training examples, model{} {} on {}, strategy {}",
               first.id, clients_.size() > 1 ? " .. " + last.id : "",
               clients_.size() > 1 ? "s" : "", first.partition,
               clients_.size() > 1 ? ".." + std::to_string(last.partition) : "", examples,
               models_.size() > 1 ? "s" : "", archs, device_name(device_), strategy_name_);
  return Status::OK();
}

v1::JoinRequest TaskRunner::join_request() const {
  v1::JoinRequest request;
  auto examples = [&](const std::string& id) -> int64_t {
    auto it = clients_.find(id);
    return it == clients_.end() ? 0 : it->second.train.size();
  };
  // Each client's own architecture (config.model.groups), "" before prepare().
  auto family = [&](const std::string& id) -> std::string {
    auto it = clients_.find(id);
    return it == clients_.end() ? "" : it->second.arch;
  };
  nlohmann::json properties = {{"device", options_.device.empty() ? "auto" : options_.device},
                               {"fedtail_version", FEDTAIL_VERSION}};
  if (options_.virtual_clients) {
    for (const HostedClient& c : options_.clients) {
      v1::VirtualClient* v = request.add_virtual_clients();
      v->set_client_id(c.id);
      v->set_num_examples(examples(c.id));
      v->set_model_family(family(c.id));
      if (!options_.token_secret.empty())
        v->set_join_token(join_token(options_.token_secret, c.id));
    }
    properties["partitions"] = {options_.clients.front().partition,
                                options_.clients.back().partition};
  } else {
    const HostedClient& c = options_.clients.front();
    request.set_num_examples(examples(c.id));
    request.set_model_family(family(c.id));
    properties["partition"] = c.partition;
  }
  request.set_properties_json(dump_json(properties));
  return request;
}

Result<strategies::ClientAlgorithm*> TaskRunner::algorithm_for(const std::string& strategy) {
  auto it = algorithms_.find(strategy);
  if (it != algorithms_.end()) return it->second.get();
  Result<std::unique_ptr<strategies::ClientAlgorithm>> algorithm =
      strategies::make_client_algorithm(strategy, strategy_config_);
  if (!algorithm.ok()) return algorithm.status().with_context("config.strategy");
  strategies::ClientAlgorithm* raw = algorithm->get();
  algorithms_.emplace(strategy, std::move(algorithm).value());
  return raw;
}

void TaskRunner::request_stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_.store(true);
  done_cv_.notify_all();
}

bool TaskRunner::wait_for_worker(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  bool done = done_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                                [this] { return worker_done_; });
  lock.unlock();
  if (done && worker_.joinable()) worker_.join();
  return done;
}

bool TaskRunner::run_with_heartbeats(const std::string& task_id, const std::function<void()>& work,
                                     bool* stopped) {
  *stopped = false;
  if (worker_.joinable()) worker_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_done_ = false;
  }
  worker_ = std::thread([this, work] {
    work();
    std::lock_guard<std::mutex> lock(mu_);
    worker_done_ = true;
    done_cv_.notify_all();
  });

  bool cancelled = false;
  bool heartbeat_failed = false;
  const auto interval = std::chrono::milliseconds(heartbeat_interval_ms_);
  while (true) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait_for(lock, interval, [this] { return worker_done_ || stop_.load(); });
    if (worker_done_) {
      lock.unlock();
      worker_.join();
      return !cancelled;
    }
    if (stop_.load()) {
      *stopped = true;
      return false;  // the worker is abandoned; wait_for_worker() or process exit ends it
    }
    lock.unlock();
    if (cancelled) continue;  // the model is shared: wait for the worker, but stay quiet
    Result<bool> cancel = connection_->heartbeat(task_id, /*progress=*/0.0);
    if (!cancel.ok()) {
      if (!heartbeat_failed) {
        spdlog::warn("heartbeat for task {} failed ({}); training goes on", task_id,
                     cancel.status().message());
      }
      heartbeat_failed = true;
    } else if (*cancel) {
      spdlog::warn(
          "the coordinator cancelled task {} (its round is over); the result will be "
          "dropped once training stops",
          task_id);
      cancelled = true;
    }
  }
}

TaskRunner::WorkResult TaskRunner::run_task(const PulledTask& task, Client& client,
                                            strategies::ClientAlgorithm* algorithm,
                                            const nlohmann::json& task_config,
                                            strategies::ClientState* state) {
  WorkResult result;
  const auto start = std::chrono::steady_clock::now();
  const v1::TaskHeader& header = task.header;
  const uint64_t round = header.round();
  const uint64_t kind = static_cast<uint64_t>(header.kind());
  try {
    auto model = models_.find(client.arch);
    FEDTAIL_CHECK(model != models_.end());

    Rng rng = Rng::derive(config_->seed, "client",
                          {round, static_cast<uint64_t>(client.hosted.partition), kind});
    // Code that draws from LibTorch's global generator (it should use context.rng) is
    // deterministic all the same.
    torch::manual_seed(Rng::derive(config_->seed, "client_torch",
                                   {round, static_cast<uint64_t>(client.hosted.partition), kind})
                           .seed_for_torch());

    strategies::ClientContext context;
    context.client_id = client.hosted.id;
    context.round = static_cast<int>(round);
    context.config = config_.get();
    context.strategy_config = strategy_config_;
    context.task_config = task_config;
    context.train = &client.train;
    context.test = &client.test;
    context.global_train_counts = data_.train_class_counts;
    context.device = device_;
    context.rng = &rng;
    context.state = state;
    context.model = &model->second;
    context.test_rows = &client.test_rows;
    context.test_features = test_features_.get();

    if (header.kind() == v1::TASK_KIND_FIT) {
      Result<strategies::FitOutput> output = algorithm->fit(context, task.bundle);
      if (output.ok()) {
        result.fit = std::move(output).value();
      } else {
        result.status = output.status();
      }
    } else {
      Result<nlohmann::json> metrics = algorithm->evaluate(context, task.bundle);
      if (metrics.ok()) {
        result.eval_metrics = std::move(metrics).value();
        result.eval_examples = client.test.size();
      } else {
        result.status = metrics.status();
      }
    }
  } catch (const std::exception& e) {
    result.status = Status::Internal(std::string(kind_name(header.kind())) + " threw: " + e.what());
  } catch (...) {
    result.status =
        Status::Internal(std::string(kind_name(header.kind())) + " threw a non-standard exception");
  }
  result.seconds = seconds_since(start);
  return result;
}

Result<TaskOutcome> TaskRunner::push(const v1::TaskHeader& header, bool ok,
                                     const std::string& error, int64_t num_examples,
                                     const nlohmann::json& metrics, const TensorBundle& bundle) {
  v1::ResultHeader result;
  result.set_task_id(header.task_id());
  result.set_client_id(header.client_id().empty() ? options_.clients.front().id
                                                  : header.client_id());
  result.set_ok(ok);
  result.set_error(error);
  result.set_num_examples(num_examples);
  result.set_metrics_json(dump_json(metrics.is_object() ? metrics : nlohmann::json::object()));
  const uint64_t give_up =
      header.deadline_unix_ms() == 0 ? 0 : header.deadline_unix_ms() + kPushGraceMs;
  FEDTAIL_ASSIGN_OR_RETURN(
      v1::PushResultResponse response,
      connection_->push_result(std::move(result), bundle, give_up, header.round()));
  TaskOutcome outcome;
  outcome.kind = TaskOutcome::Kind::kPushed;
  outcome.ok = ok;
  outcome.error = error;
  outcome.response = response;
  if (!response.accepted()) {
    spdlog::warn("the coordinator refused the result of task {}: {}", header.task_id(),
                 response.reason().empty() ? "(no reason given)" : response.reason());
  } else if (response.duplicate()) {
    spdlog::info("the coordinator already had the result of task {}", header.task_id());
  }
  return outcome;
}

Result<TaskOutcome> TaskRunner::handle(PulledTask task) {
  const v1::TaskHeader header = task.header;
  const TensorBundle empty;
  auto refuse = [&](const std::string& error) -> Result<TaskOutcome> {
    spdlog::error("task {} ({} round {}): {}; reporting the failure to the coordinator",
                  header.task_id(), kind_name(header.kind()), header.round(), error);
    return push(header, /*ok=*/false, error, 0, nlohmann::json::object(), empty);
  };
  if (stop_.load()) return Status::Unavailable("stopping");
  if (!config_) return refuse("the client has no run set up");
  if (header.kind() != v1::TASK_KIND_FIT && header.kind() != v1::TASK_KIND_EVALUATE) {
    return refuse(std::string("unsupported task kind ") + std::to_string(header.kind()));
  }
  std::string client_id = header.client_id();
  if (client_id.empty() && clients_.size() == 1) client_id = clients_.begin()->first;
  auto it = clients_.find(client_id);
  if (it == clients_.end()) {
    return refuse("this process does not host client \"" + client_id + "\" (it hosts " +
                  clients_.begin()->first +
                  (clients_.size() > 1 ? " .. " + clients_.rbegin()->first : "") + ")");
  }
  Client& client = it->second;
  if (!task.bundle_status.ok()) return refuse(task.bundle_status.to_string());
  Result<strategies::ClientAlgorithm*> algorithm =
      algorithm_for(header.strategy().empty() ? strategy_name_ : header.strategy());
  if (!algorithm.ok()) return refuse(algorithm.status().to_string());
  nlohmann::json task_config = nlohmann::json::object();
  if (!header.config_json().empty()) {
    try {
      task_config = nlohmann::json::parse(header.config_json());
    } catch (const nlohmann::json::exception& e) {
      return refuse(std::string("the task's config is not valid JSON: ") + e.what());
    }
  }

  const int kind = static_cast<int>(header.kind());
  const int64_t round = static_cast<int64_t>(header.round());
  Result<strategies::ClientState> loaded = store_->load(client_id, run_id_, round, kind);
  if (!loaded.ok()) {
    Result<std::string> aside = store_->quarantine(client_id);
    spdlog::error("{}: its state is unreadable ({}); {}; continuing from an empty state", client_id,
                  loaded.status().to_string(),
                  aside.ok() ? "moved the file to " + *aside
                             : "could not move it aside: " + aside.status().message());
    loaded = strategies::ClientState{};
  }

  // The worker owns what it touches, so that an abandoned worker never sees freed memory.
  struct Job {
    PulledTask task;
    nlohmann::json task_config;
    strategies::ClientState state;
    WorkResult result;
  };
  auto job = std::make_shared<Job>();
  job->task = std::move(task);
  job->task_config = std::move(task_config);
  job->state = std::move(loaded).value();
  const strategies::ClientState before = clone_state(job->state);

  spdlog::info("{}: round {} {} (task {})", client_id, round, kind_name(header.kind()),
               header.task_id());
  bool stopped = false;
  Client* client_ptr = &client;
  strategies::ClientAlgorithm* algorithm_ptr = *algorithm;
  const bool completed = run_with_heartbeats(
      header.task_id(),
      [this, job, client_ptr, algorithm_ptr] {
        if (job->task.header.kind() == v1::TASK_KIND_FIT) {
          TEST_fault_pause(FaultPoint::kTrain, job->task.header.round(),
                           [this] { return stop_.load(); });
        }
        job->result =
            run_task(job->task, *client_ptr, algorithm_ptr, job->task_config, &job->state);
      },
      &stopped);
  if (stopped) {
    spdlog::warn("stopping: abandoning task {} ({} round {})", header.task_id(),
                 kind_name(header.kind()), round);
    return Status::Unavailable("stopping");
  }
  if (!completed) {
    TaskOutcome outcome;
    outcome.kind = TaskOutcome::Kind::kCancelled;
    return outcome;
  }

  WorkResult& result = job->result;
  if (!result.status.ok()) {
    spdlog::warn("{}: round {} {} failed after {:.1f} s: {}; reporting the failure", client_id,
                 round, kind_name(header.kind()), result.seconds, result.status.to_string());
    return push(header, /*ok=*/false, result.status.to_string(), 0, nlohmann::json::object(),
                empty);
  }

  if (header.kind() == v1::TASK_KIND_FIT) {
    const TensorBundle& update = result.fit.update;
    if (max_update_bytes_ > 0 && update.payload_bytes() > max_update_bytes_) {
      return refuse("the update has " + std::to_string(update.payload_bytes()) +
                    " bytes, more than the coordinator's max_update_bytes (" +
                    std::to_string(max_update_bytes_) + ")");
    }
    Status finite = check_finite(update);
    if (!finite.ok()) return refuse("the update is not finite: " + finite.message());
    if (result.fit.num_examples <= 0) {
      return refuse("the strategy reported num_examples " +
                    std::to_string(result.fit.num_examples) + " (must be > 0)");
    }
  }

  // Save before pushing: if the process dies between the two, the coordinator re-sends the task
  // and the repeated (round, kind) starts from `before` again (see StateStore).
  Status saved = store_->save(client_id, run_id_, round, kind, before, job->state);
  if (!saved.ok()) {
    spdlog::error(
        "{}: cannot save its state ({}); pushing the result anyway, but a restart will "
        "start from the previous state",
        client_id, saved.to_string());
  }

  if (header.kind() == v1::TASK_KIND_FIT) {
    const nlohmann::json& metrics = result.fit.metrics;
    std::string loss =
        metrics.is_object() && metrics.contains("loss") && metrics["loss"].is_number()
            ? fmt::format(", loss {:.4f}", metrics["loss"].get<double>())
            : "";
    spdlog::info("{}: round {} fit done: {} examples{}, {:.1f} s; uploading {} bytes", client_id,
                 round, result.fit.num_examples, loss, result.seconds,
                 result.fit.update.payload_bytes());
    nlohmann::json reported = metrics.is_object() ? metrics : nlohmann::json::object();
    reported["compute_s"] = result.seconds;  // the coordinator's per-round timing split
    return push(header, /*ok=*/true, "", result.fit.num_examples, reported, result.fit.update);
  }
  spdlog::info("{}: round {} evaluate done: {} test examples, {:.1f} s", client_id, round,
               result.eval_examples, result.seconds);
  nlohmann::json reported =
      result.eval_metrics.is_object() ? result.eval_metrics : nlohmann::json::object();
  reported["compute_s"] = result.seconds;
  return push(header, /*ok=*/true, "", result.eval_examples, reported, empty);
}

}  // namespace fedtail::client
