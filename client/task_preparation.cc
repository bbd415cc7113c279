// TaskRunner's setup half: prepare() builds, from the coordinator's Join answer, what the hosted
// clients' tasks need (the run config, the FederatedData and each client's datasets, one Model per
// architecture, the strategy's ClientAlgorithm); join_request() describes the hosted clients to the
// coordinator. Running a task (handle(): worker thread, heartbeats, saving the state, pushing the
// result) is in task_runner.cc.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include "client/task_runner.h"
#include "client/task_runner_detail.h"
#include "common/base/json_reader.h"
#include "common/base/rng.h"
#include "common/data/dataset_readers.h"
#include "common/learning/config_sections.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "common/learning/torchscript_model.h"
#include "common/security/join_token.h"
#include "strategies/registry.h"

namespace fedtail::client {

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

  // Depth-limited: a run config nested 100000 deep would parse, then overflow the stack in the
  // first copy of the value.
  Result<nlohmann::json> parsed = parse_json_text(join.run_config_json());
  if (!parsed.ok()) {
    return parsed.status().with_context("the run config sent by the coordinator");
  }
  const nlohmann::json json = std::move(parsed).value();
  FEDTAIL_ASSIGN_OR_RETURN(RunConfig config, parse_run_config(json, coordinator_config_sections()));

  // config.strategy: {"name": ..., options...}; the factories get it without "name".
  const nlohmann::json strategy = config.extra.value("strategy", nlohmann::json::object());
  if (!strategy.is_object() || !strategy.contains("name") || !strategy["name"].is_string()) {
    return Status::InvalidArgument(
        "config.strategy.name: missing (the run config names no strategy)");
  }
  std::string strategy_name = strategy["name"].get<std::string>();
  nlohmann::json strategy_config = strategy;
  strategy_config.erase("name");

  // Read wide (a uint32 read of a larger number would wrap), then clamped client-side.
  uint64_t requested_poll_ms = 20000;
  const nlohmann::json federation = config.extra.value("federation", nlohmann::json::object());
  if (federation.is_object() && federation.contains("poll_timeout_ms") &&
      federation["poll_timeout_ms"].is_number_unsigned()) {
    requested_poll_ms = federation["poll_timeout_ms"].get<uint64_t>();
  }
  if (requested_poll_ms > kMaxPollTimeoutMs) {
    spdlog::warn(
        "config.federation.poll_timeout_ms {} is over this client's maximum; polling {} ms",
        requested_poll_ms, kMaxPollTimeoutMs);
  }
  const uint32_t poll_timeout_ms =
      static_cast<uint32_t>(std::min<uint64_t>(requested_poll_ms, kMaxPollTimeoutMs));

  // Where the data is on this machine is the client's own setting (--data-root): a coordinator
  // must not point the client at, and have it write a cache into, any folder it can read.
  const std::string own_root =
      options_.data_root.empty() ? default_data_root(config.data.dataset) : options_.data_root;
  if (!config.data.root.empty() && config.data.root != own_root) {
    spdlog::warn(
        "ignoring the coordinator's config.data.root \"{}\": this client reads its data from "
        "\"{}\" (--data-root)",
        config.data.root, own_root.empty() ? "(none: pass --data-root)" : own_root);
  }
  config.data.root = options_.data_root;
  if (config.model.arch == kTorchScriptArch && !options_.model_path.empty()) {
    config.model.path = options_.model_path;
  }
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
               detail::seconds_since(start));

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
        FEDTAIL_RETURN_IF_ERROR(check_torchscript_pins(model_options, *model, model_options.path));
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
  // The coordinator's heartbeat interval, within client-side bounds: 0 (unset) means 5 s.
  heartbeat_interval_ms_ = join.heartbeat_interval_ms() == 0
                               ? 5000
                               : std::clamp(join.heartbeat_interval_ms(), kMinHeartbeatIntervalMs,
                                            kMaxHeartbeatIntervalMs);
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
      if (!options_.token_secret.empty()) {
        const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
        v->set_join_token(make_join_token(options_.token_secret, c.id, options_.token_federation,
                                          now_s + kDerivedTokenLifetimeS));
      }
    }
    properties["partitions"] = {options_.clients.front().partition,
                                options_.clients.back().partition};
  } else {
    const HostedClient& c = options_.clients.front();
    request.set_num_examples(examples(c.id));
    request.set_model_family(family(c.id));
    properties["partition"] = c.partition;
  }
  request.set_properties_json(detail::dump_json(properties));
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

}  // namespace fedtail::client
