// TaskRunner's execution half: handle() runs one task end to end (checks, the client's state
// loaded, fit or evaluate on the worker thread with heartbeats meanwhile, the state saved, the
// result pushed), and request_stop()/wait_for_worker() abandon it. Setting the run up (prepare(),
// join_request(), the strategy's ClientAlgorithm) is in task_preparation.cc.
#include "client/task_runner.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <exception>
#include <utility>

#include "client/fault_pause.h"
#include "client/task_runner_detail.h"
#include "common/base/json_reader.h"
#include "common/base/rng.h"
#include "common/wire/bundle_checks.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::client {

namespace {

// A late result is still offered this long after the task's deadline: the coordinator's clock
// decides, and clocks of distinct machines differ.
constexpr uint64_t kPushGraceMs = 60'000;

const char* kind_name(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_FIT:
      return "fit";
    case v1::TASK_KIND_EVALUATE:
      return "evaluate";
    case v1::TASK_KIND_SECAGG:
      return "secagg";
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
  result.seconds = detail::seconds_since(start);
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
  result.set_metrics_json(
      detail::dump_json(metrics.is_object() ? metrics : nlohmann::json::object()));
  // The deadline is the coordinator's word; the client bounds how long it keeps retrying.
  const uint64_t latest = unix_now_ms() + kMaxResultDeliveryMs;
  const uint64_t deadline = header.deadline_unix_ms();
  const uint64_t give_up =
      deadline == 0 || deadline >= latest - kPushGraceMs ? latest : deadline + kPushGraceMs;
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

Result<TaskOutcome> TaskRunner::handle_secagg(const v1::TaskHeader& header,
                                              const std::string& client_id,
                                              const nlohmann::json& task_config) {
  const auto start = std::chrono::steady_clock::now();
  const nlohmann::json request = task_config.is_object() && task_config.contains("secagg")
                                     ? task_config["secagg"]
                                     : nlohmann::json();
  Result<nlohmann::json> reply = secure_.run_stage(client_id, header.round(), request);
  const std::string stage = request.is_object() ? request.value("stage", "?") : "?";
  if (!reply.ok()) {
    spdlog::warn("{}: round {} secagg {}: {}; reporting the failure", client_id, header.round(),
                 stage, reply.status().to_string());
    return push(header, /*ok=*/false, reply.status().to_string(), 0, nlohmann::json::object(),
                TensorBundle());
  }
  spdlog::debug("{}: round {} secagg {} done", client_id, header.round(), stage);
  nlohmann::json metrics = {{"secagg", std::move(reply).value()},
                            {"compute_s", detail::seconds_since(start)}};
  Result<TaskOutcome> pushed = push(header, /*ok=*/true, "", 0, metrics, TensorBundle());
  TEST_fault_exit(stage.c_str(), header.round());
  return pushed;
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
  if (header.kind() != v1::TASK_KIND_FIT && header.kind() != v1::TASK_KIND_EVALUATE &&
      header.kind() != v1::TASK_KIND_SECAGG) {
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
    // Depth-limited: the value is copied into the worker's job and the strategy's context.
    Result<nlohmann::json> parsed = parse_json_text(header.config_json());
    if (!parsed.ok()) return refuse("the task's config_json: " + parsed.status().message());
    task_config = std::move(parsed).value();
  }
  if (header.kind() == v1::TASK_KIND_SECAGG) return handle_secagg(header, client_id, task_config);
  if (header.kind() == v1::TASK_KIND_FIT) TEST_fault_exit("train", header.round());

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
    Status attacked = apply_attack(options_.attack, job->task.bundle, client_id, config_->seed,
                                   round, &result.fit.update, &result.fit.num_examples);
    if (!attacked.ok()) return refuse(attacked.message());
    if (SecureSessions::wants_masked_update(job->task_config)) {
      // Secure aggregation: the upload is the masked, quantised change, never the update.
      int64_t clamped = 0;
      Result<TensorBundle> masked =
          secure_.mask_update(client_id, static_cast<uint64_t>(round), job->task_config["secagg"],
                              job->task.bundle, std::move(result.fit.update), &clamped);
      if (!masked.ok()) return refuse(masked.status().to_string());
      result.fit.update = std::move(masked).value();
      if (clamped > 0) {
        spdlog::warn("{}: round {}: {} value(s) of the update clamped to secagg.clip", client_id,
                     round, clamped);
      }
      if (result.fit.metrics.is_object()) result.fit.metrics["secagg_clamped"] = clamped;
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
    Result<TaskOutcome> pushed =
        push(header, /*ok=*/true, "", result.fit.num_examples, reported, result.fit.update);
    TEST_fault_exit("fit", header.round());
    return pushed;
  }
  spdlog::info("{}: round {} evaluate done: {} test examples, {:.1f} s", client_id, round,
               result.eval_examples, result.seconds);
  nlohmann::json reported =
      result.eval_metrics.is_object() ? result.eval_metrics : nlohmann::json::object();
  reported["compute_s"] = result.seconds;
  return push(header, /*ok=*/true, "", result.eval_examples, reported, empty);
}

}  // namespace fedtail::client
