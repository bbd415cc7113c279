#include "simulations/simulation.h"

#include <spdlog/spdlog.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "common/base/json_reader.h"
#include "common/learning/device.h"
#include "common/learning/model_options.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator.h"
#include "simulations/config_check.h"
#include "simulations/run_credentials.h"
#include "simulations/worker_pool.h"

namespace fedtail::simulation {
namespace {

namespace fs = std::filesystem;

// How long workers get to collect their SHUTDOWN and leave after a run.
constexpr std::chrono::seconds kWorkerExitGrace{30};

std::string program_dir() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "." : self.parent_path().string();
}

std::optional<double> number_at(const nlohmann::json& json,
                                std::initializer_list<const char*> path) {
  const nlohmann::json* node = &json;
  for (const char* key : path) {
    if (!node->is_object() || !node->contains(key)) return std::nullopt;
    node = &(*node)[key];
  }
  if (!node->is_number()) return std::nullopt;
  return node->get<double>();
}

// `text` as one shell word: as it is when it is plain, else in single quotes.
std::string shell_quoted(const std::string& text) {
  const bool plain = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           (c != '\0' && std::strchr("-_./=:,+@%", c) != nullptr);
  });
  if (plain) return text;
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// This machine's host name; "" when it cannot be read.
std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// "host:port", with an IPv6 literal in brackets.
std::string dial_address(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

}  // namespace

Result<std::unique_ptr<Simulation>> Simulation::create(SimulationOptions options) {
  std::unique_ptr<Simulation> simulation(new Simulation(std::move(options)));
  FEDTAIL_RETURN_IF_ERROR(simulation->init());
  return simulation;
}

std::string Simulation::path(const std::string& relative) const {
  return (fs::path(options_.out_dir) / relative).string();
}

Status Simulation::init() {
  if (options_.config_path.empty()) return Status::InvalidArgument("CONFIG: required");
  if (options_.out_dir.empty()) return Status::InvalidArgument("--out: required");
  if (options_.resume && options_.overwrite) {
    return Status::InvalidArgument("--resume and --overwrite exclude each other");
  }
  FEDTAIL_ASSIGN_OR_RETURN(config_, load_json_file(options_.config_path));
  FEDTAIL_RETURN_IF_ERROR(apply_overrides(options_.overrides, &config_));
  if (options_.plan.config_dir.empty()) {
    // Relative trace paths (simulation.devices) are read from beside the config.
    options_.plan.config_dir = fs::absolute(fs::path(options_.config_path)).parent_path().string();
  }
  {
    Result<SimulationPlan> plan = make_plan(config_, options_.plan);
    if (!plan.ok()) return plan.status().with_context(options_.config_path);
    plan_ = std::move(plan).value();
  }
  {
    // Pre-flight: what would make every run fail at start (data absent, a strategy's bad option)
    // stops the simulation once, here. Stat calls and option parsing only: no data is loaded.
    CheckOptions preflight;
    preflight.build_data = false;
    preflight.initialize = false;
    const Status checked = check_status(check_plan(plan_, preflight));
    if (!checked.ok()) {
      return Status::FailedPrecondition(options_.config_path +
                                        ": cannot start: " + checked.message());
    }
  }
  if (options_.client_binary.empty()) options_.client_binary = program_dir() + "/fedtail-client";
  if (::access(options_.client_binary.c_str(), X_OK) != 0) {
    return Status::NotFound(options_.client_binary +
                            ": fedtail-client not found beside fedtail-sim (build it)");
  }
  if (options_.launcher == "slurm") {
    FEDTAIL_RETURN_IF_ERROR(init_slurm());
  } else if (options_.launcher != "local") {
    return Status::InvalidArgument("--launcher: must be local or slurm (got \"" +
                                   options_.launcher + "\")");
  }

  // Workers and devices: one worker per GPU when training on CUDA, else one per core.
  const int cores = std::max(1, hardware_threads());
  const std::string device = options_.device.empty()
                                 ? plan_.base_config.value("device", std::string("auto"))
                                 : options_.device;
  {
    Result<torch::Device> parsed = parse_device(device);
    if (!parsed.ok()) {
      return parsed.status().with_context(options_.device.empty() ? "config.device" : "--device");
    }
    if (slurm_ && parsed->is_cuda() && !parsed->has_index() && slurm_->gpus_per_node > 0) {
      // Each worker step is given one GPU, which it sees as its only one.
      devices_.push_back("cuda:0");
      slurm_gpus_ = true;
    } else if (parsed->is_cuda() && !parsed->has_index()) {
      const int gpus = static_cast<int>(torch::cuda::device_count());
      for (int i = 0; i < gpus; ++i) devices_.push_back("cuda:" + std::to_string(i));
    } else {
      devices_.push_back(device_name(*parsed));
    }
  }
  const bool cuda = devices_.front().rfind("cuda", 0) == 0;
  workers_ = plan_.workers > 0 ? plan_.workers : cuda ? static_cast<int>(devices_.size()) : cores;
  workers_ = std::clamp(workers_, 1, std::max(1, plan_.num_clients));
  threads_per_worker_ = options_.threads > 0 ? options_.threads : std::max(1, cores / workers_);
  if (slurm_) {
    // The allocation, not this machine, decides: its GPUs or tasks, and each node's CPUs.
    workers_ = plan_.workers > 0 ? plan_.workers : default_slurm_workers(*slurm_, cuda);
    workers_ = std::clamp(workers_, 1, std::max(1, plan_.num_clients));
    threads_per_worker_ =
        options_.threads > 0 ? options_.threads : slurm_cpus_per_worker(*slurm_, workers_);
  }
  coordinator_threads_ = cores;

  // The output directory.
  std::error_code ec;
  const bool earlier = fs::exists(path("runs"), ec) || fs::exists(path("summary.json"), ec);
  if (earlier && !options_.resume && !options_.overwrite) {
    return Status::FailedPrecondition(
        "--out: " + options_.out_dir +
        " holds an earlier simulation: pass --resume to continue it, --overwrite to discard it, or "
        "choose another --out");
  }
  if (earlier && options_.overwrite) {
    for (const char* name :
         {"runs", "curves", "summary.json", "summary.md", "metrics.jsonl", "accuracy.png",
          "personalized.png", "accuracy_vs_time.png", "sim.log"}) {
      fs::remove_all(path(name), ec);
    }
  }
  fs::create_directories(options_.out_dir, ec);
  if (ec) {
    return Status::IOError("--out: cannot create " + options_.out_dir + ": " + ec.message());
  }

  // Progress and logging: rounds already done by an earlier attempt count as done.
  int done_rounds = 0;
  if (options_.resume) {
    for (const StrategyEntry& entry : plan_.strategies) {
      for (uint64_t seed : plan_.seeds) {
        Result<std::vector<nlohmann::json>> lines = coordinator::read_metrics_lines(
            path("runs/" + run_dir_name(entry, seed) + "/" + coordinator::kMetricsFile));
        if (lines.ok()) done_rounds += static_cast<int>(lines->size());
      }
    }
  }
  progress_ =
      std::make_unique<Progress>(plan_.num_runs() * plan_.rounds, done_rounds, options_.terminal);
  return init_simulation_logging(options_.log_level, path("sim.log"), progress_.get());
}

Status Simulation::init_slurm() {
  const std::map<std::string, std::string> env = process_environment();
  FEDTAIL_ASSIGN_OR_RETURN(SlurmAllocation allocation, read_slurm_allocation(env));
  Result<std::string> srun = find_on_path("srun", env);
  if (!srun.ok()) return srun.status().with_context("--launcher slurm");
  srun_ = std::move(srun).value();
  coordinator_host_ = !options_.coordinator_host.empty() ? options_.coordinator_host : host_name();
  if (coordinator_host_.empty()) coordinator_host_ = allocation.this_node;
  if (coordinator_host_.empty()) {
    return Status::FailedPrecondition(
        "--launcher slurm: cannot tell this host's name: pass --coordinator-host");
  }
  slurm_ = std::move(allocation);
  return Status::OK();
}

std::vector<std::vector<std::string>> Simulation::worker_launchers() const {
  std::vector<std::vector<std::string>> launchers;
  if (!slurm_) return launchers;
  SrunStepOptions step;
  step.srun = srun_;
  step.workers = workers_;
  step.cpus_per_task = slurm_cpus_per_worker(*slurm_, workers_);
  step.gpu = slurm_gpus_;
  step.extra_args = options_.srun_args;
  for (int i = 0; i < workers_; ++i) {
    step.worker = i;
    launchers.push_back(srun_step_command(*slurm_, step));
  }
  return launchers;
}

void Simulation::request_stop() {
  stop_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

Result<RunResult> Simulation::run_one(const StrategyEntry& entry, uint64_t seed) {
  RunResult result;
  result.label = entry.label;
  result.strategy = entry.strategy.value("name", "");
  result.seed = seed;
  result.run_dir = "runs/" + run_dir_name(entry, seed);
  const std::string run_dir = path(result.run_dir);
  const std::string name = entry.label + " seed " + std::to_string(seed);
  const std::string summary_path = run_dir + "/" + coordinator::kSummaryFile;
  const std::string metrics_path = run_dir + "/" + coordinator::kMetricsFile;
  std::error_code ec;

  // Finished by an earlier attempt?
  if (options_.resume && fs::exists(summary_path, ec)) {
    Result<nlohmann::json> summary = load_json_file(summary_path);
    // Finished: every round ran, or a DP run stopped at its privacy budget.
    const bool finished =
        summary.ok() && (summary->value("rounds_completed", 0) >= plan_.rounds ||
                         (summary->contains("privacy") && (*summary)["privacy"].is_object() &&
                          (*summary)["privacy"].value("budget_exhausted", false)));
    if (finished) {
      result.summary = *summary;
      FEDTAIL_ASSIGN_OR_RETURN(result.lines, coordinator::read_metrics_lines(metrics_path));
      spdlog::info("{}: finished earlier ({} rounds), kept", name, plan_.rounds);
      return result;
    }
  }
  fs::create_directories(run_dir, ec);
  if (ec) return Status::IOError(run_dir + ": cannot create: " + ec.message());
  const std::string config_path = run_dir + "/config.json";
  const nlohmann::json run_config = run_config_for(plan_, entry, seed);
  FEDTAIL_RETURN_IF_ERROR(coordinator::write_file_atomic(config_path, run_config.dump(2) + "\n"));

  coordinator::CoordinatorFlags flags;
  flags.config_path = config_path;
  flags.listen = slurm_ ? "0.0.0.0:0" : "127.0.0.1:0";
  RunCredentials credentials;
  if (slurm_) {
    // Workers on other nodes: TLS, and join tokens of this run only.
    FEDTAIL_ASSIGN_OR_RETURN(
        credentials,
        make_run_credentials(run_dir + "/tls", {coordinator_host_, slurm_->this_node, host_name(),
                                                "localhost", "127.0.0.1"}));
    flags.tls.cert = credentials.server_cert;
    flags.tls.key = credentials.server_key;
    flags.token_secret_file = credentials.token_secret;
  }
  flags.state_dir = run_dir;
  flags.resume = options_.resume && fs::exists(run_dir + "/" + coordinator::kCheckpointFile, ec);
  flags.device = devices_.front();
  flags.threads = coordinator_threads_;
  flags.live = options_.live;
  flags.live_label = name + ", run " + std::to_string(run_index_) + "/" +
                     std::to_string(plan_.strategies.size() * plan_.seeds.size());
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<coordinator::Coordinator> coordinator,
                           coordinator::Coordinator::create(flags));
  int first_round = 1;
  if (flags.resume) {
    Result<std::vector<nlohmann::json>> lines = coordinator::read_metrics_lines(metrics_path);
    if (lines.ok()) first_round = static_cast<int>(lines->size()) + 1;
  }
  bool done = false;
  coordinator->set_on_done([this, &done] {
    std::lock_guard<std::mutex> lock(mu_);
    done = true;
    cv_.notify_all();
  });
  coordinator->set_on_round([this](const nlohmann::json& line) {
    progress_->round_done(line.value("round", 0),
                          number_at(line, {"server_eval", "generic", "overall"}),
                          number_at(line, {"evaluate", "metrics", "personalized", "mean"}));
  });
  FEDTAIL_RETURN_IF_ERROR(coordinator->start());
  progress_->begin_run(name, plan_.rounds, first_round);

  WorkerPoolOptions pool_options;
  pool_options.client_binary = options_.client_binary;
  pool_options.coordinator =
      slurm_ ? dial_address(coordinator_host_, coordinator->port()) : coordinator->address();
  pool_options.num_clients = plan_.num_clients;
  pool_options.workers = workers_;
  pool_options.devices = devices_;
  pool_options.threads_per_worker = threads_per_worker_;
  pool_options.state_dir = run_dir + "/clients";
  pool_options.log_dir = run_dir + "/workers";
  pool_options.plugins = options_.plugins;
  pool_options.log_level = options_.worker_log_level;
  pool_options.launchers = worker_launchers();
  pool_options.tls_ca = credentials.ca_cert;
  pool_options.token_secret_file = credentials.token_secret;
  {
    // Absolute: a worker may run elsewhere (a Slurm step) with another working directory.
    auto absolute_path = [](const std::string& p) {
      return p.empty() ? p : fs::absolute(p).lexically_normal().string();
    };
    if (run_config.contains("data") && run_config["data"].is_object()) {
      pool_options.data_root = absolute_path(run_config["data"].value("root", ""));
    }
    if (run_config.contains("model") && run_config["model"].is_object() &&
        run_config["model"].value("arch", "") == kTorchScriptArch) {
      pool_options.model_path = absolute_path(run_config["model"].value("path", ""));
    }
  }
  Result<std::unique_ptr<WorkerPool>> started = WorkerPool::start(pool_options);
  if (!started.ok()) {
    coordinator->request_stop();
    (void)coordinator->wait();
    progress_->end_run();
    return started.status();
  }
  std::unique_ptr<WorkerPool> pool = std::move(started).value();
  if (slurm_) {
    for (size_t i = 0; i < pool_options.launchers.size(); ++i) {
      std::string command;
      for (const std::string& word : pool_options.launchers[i]) {
        command += (command.empty() ? "" : " ") + shell_quoted(word);
      }
      spdlog::info("{}: worker {}: Slurm step `{} fedtail-client ...`", name, i, command);
    }
    spdlog::info("{}: Slurm job {}: TLS and join tokens made for this run in {}/tls", name,
                 slurm_->job_id, run_dir);
  }
  spdlog::info("{}: coordinator on {}, {} worker(s) for {} clients ({} thread(s) each), logs in {}",
               name, pool_options.coordinator, pool->size(), plan_.num_clients, threads_per_worker_,
               pool_options.log_dir);

  int min_available = coordinator->options().federation.min_available_clients;
  std::string failure;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(500), [&] { return done || stop_.load(); });
      if (done) break;
    }
    if (stop_.load()) {
      coordinator->request_stop();
      continue;  // until on_done
    }
    progress_->tick();
    for (const WorkerLoss& loss : pool->check()) {
      const int live = pool->live_clients();
      spdlog::error(
          "{}: worker {} (clients {}-{}) {}; its {} clients count as failures from now on, {} "
          "remain (log: {})",
          name, loss.worker, loss.first_client, loss.last_client, loss.how,
          loss.last_client - loss.first_client + 1, live, loss.log_path);
      result.worker_failures.push_back({{"worker", loss.worker},
                                        {"first_client", loss.first_client},
                                        {"last_client", loss.last_client},
                                        {"how", loss.how},
                                        {"log", loss.log_path}});
      if (live == 0) {
        failure = "every worker ended (see " + pool_options.log_dir + ")";
        coordinator->request_stop();
      } else if (live < min_available) {
        min_available = live;
        coordinator->set_min_available_clients(min_available);
      }
    }
  }
  Status status = coordinator->wait();
  progress_->end_run();
  if (status.ok()) {
    for (const WorkerLoss& loss : pool->finish(kWorkerExitGrace)) {
      spdlog::warn("{}: worker {} (clients {}-{}) did not end cleanly: {} (log: {})", name,
                   loss.worker, loss.first_client, loss.last_client, loss.how, loss.log_path);
    }
  } else {
    pool->finish(std::chrono::milliseconds(0));  // SIGTERM, then SIGKILL: the run is over
  }
  pool.reset();
  if (stop_.load() && failure.empty()) {
    return Status::Unavailable("stopped during " + name);
  }
  if (!status.ok()) {
    result.status = "failed: " + (failure.empty() ? status.to_string() : failure);
  }
  if (fs::exists(summary_path, ec)) {
    Result<nlohmann::json> summary = load_json_file(summary_path);
    if (summary.ok()) result.summary = *summary;
  }
  FEDTAIL_ASSIGN_OR_RETURN(result.lines, coordinator::read_metrics_lines(metrics_path));
  return result;
}

Status Simulation::write_report(const std::vector<RunResult>& results, bool final) {
  ReportInfo info;
  info.config_path = options_.config_path;
  info.config = config_;
  info.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  info.workers = workers_;
  info.overrides = options_.overrides;
  if (slurm_) {
    info.slurm = {{"job_id", slurm_->job_id},
                  {"nodes", slurm_->nodes},
                  {"coordinator_host", coordinator_host_},
                  {"transport", "TLS, join tokens"},
                  {"gpus_per_worker", slurm_gpus_ ? 1 : 0},
                  {"cpus_per_worker", slurm_cpus_per_worker(*slurm_, workers_)}};
  }
  nlohmann::json report = make_report(info, results);
  FEDTAIL_RETURN_IF_ERROR(coordinator::write_file_atomic(
      path("summary.json"),
      report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"));
  markdown_ = report_markdown(report);
  FEDTAIL_RETURN_IF_ERROR(coordinator::write_file_atomic(path("summary.md"), markdown_));
  FEDTAIL_RETURN_IF_ERROR(
      coordinator::write_file_atomic(path("metrics.jsonl"), combined_metrics(results)));
  if (final) {
    Result<std::vector<std::string>> pngs = draw_curves(results, options_.out_dir);
    if (!pngs.ok()) {
      spdlog::warn("curves: {}", pngs.status().message());
    } else {
      for (const std::string& png : *pngs) spdlog::info("wrote {}", png);
    }
  }
  return Status::OK();
}

Status Simulation::run() {
  started_ = std::chrono::steady_clock::now();
  spdlog::info(
      "simulation of {}: {} strateg{} x {} seed(s), {} rounds, {} clients, {} worker(s) "
      "on {}{}; results in {}",
      options_.config_path, plan_.strategies.size(), plan_.strategies.size() == 1 ? "y" : "ies",
      plan_.seeds.size(), plan_.rounds, plan_.num_clients, workers_,
      devices_.size() > 1 ? "cuda" : devices_.front(),
      slurm_ ? " as steps of Slurm job " + slurm_->job_id : std::string(), options_.out_dir);
  for (const std::string& text : options_.overrides) {
    spdlog::info("config override: --set {}", text);
  }
  std::vector<RunResult> results;
  std::vector<std::string> failed;
  // Seeds outermost: a stopped simulation has every strategy's first seed before any second one.
  for (uint64_t seed : plan_.seeds) {
    for (const StrategyEntry& entry : plan_.strategies) {
      if (stop_.load()) break;
      ++run_index_;
      Result<RunResult> result = run_one(entry, seed);
      if (!result.ok() && result.status().code() == StatusCode::kUnavailable && stop_.load()) {
        break;
      }
      if (!result.ok()) {
        spdlog::error("{} seed {}: {}", entry.label, seed, result.status().to_string());
        RunResult failed_run;
        failed_run.label = entry.label;
        failed_run.strategy = entry.strategy.value("name", "");
        failed_run.seed = seed;
        failed_run.run_dir = "runs/" + run_dir_name(entry, seed);
        failed_run.status = "failed: " + result.status().to_string();
        results.push_back(std::move(failed_run));
      } else {
        results.push_back(std::move(result).value());
      }
      if (results.back().status != "completed") {
        // With the reason: a run refused at start (a bad option) must say why where the user looks.
        failed.push_back(entry.label + " seed " + std::to_string(seed) + " (" +
                         results.back().status + ")");
      }
      FEDTAIL_RETURN_IF_ERROR(write_report(results, /*final=*/false));
    }
  }
  // The table keeps the plan's order (strategy-major), whatever order the runs ran in.
  std::stable_sort(results.begin(), results.end(), [&](const RunResult& a, const RunResult& b) {
    auto index = [&](const std::string& label) {
      for (size_t i = 0; i < plan_.strategies.size(); ++i) {
        if (plan_.strategies[i].label == label) return i;
      }
      return plan_.strategies.size();
    };
    return index(a.label) < index(b.label);
  });
  FEDTAIL_RETURN_IF_ERROR(write_report(results, /*final=*/!stop_.load()));
  if (stop_.load()) {
    std::string sets;
    for (const std::string& text : options_.overrides) sets += " --set " + shell_quoted(text);
    // Under Slurm the same job is submitted again (the allocation is gone).
    const std::string again = slurm_ ? "sbatch tools/slurm/fedtail-sim.sbatch " : "fedtail-sim ";
    return Status::Unavailable("stopped; what finished is in " + options_.out_dir +
                               "; continue with: " + again + shell_quoted(options_.config_path) +
                               sets + " --out " + shell_quoted(options_.out_dir) + " --resume");
  }
  if (!failed.empty()) {
    std::string list;
    for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
    return Status::Internal(std::to_string(failed.size()) + " run(s) failed: " + list +
                            " (see summary.md and sim.log in " + options_.out_dir + ")");
  }
  return Status::OK();
}

}  // namespace fedtail::simulation
