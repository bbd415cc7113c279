// fedtail-sim: a whole federation on one machine, one or more strategies and seeds, with a
// comparison table and curves (docs/architecture.md, "The binaries' contract";
// simulations/simulation.h).
//
//   fedtail-sim CONFIG.json [--out DIR] [--workers N] [--device D] [--rounds N]
//       [--strategies a,b] [--seeds N] [--set PATH=VALUE]... [--resume | --overwrite]
//       [--threads N] [--plugin LIB.so]... [--log-level L] [--worker-log-level L]
//       [--launcher local|slurm [--coordinator-host HOST] [--srun-arg ARG]...]
//       [--http HOST:PORT [--http-token-file F]]
//   fedtail-sim CONFIG.json --check [--rounds N] [--strategies a,b] [--seeds N]
//       [--set PATH=VALUE]... [--plugin LIB.so]...
//
// Exit status: 0 when every run completed (--check: when every check passed); 1 on an error or a
// failed run (one line naming the flag, field or file, or the failed runs; --check: a failed
// check or absent data); 128+signal after SIGINT/SIGTERM (rerun with --resume).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/base/malloc_tuning.h"
#include "common/base/signal_watcher.h"
#include "coordinator/http_dashboard.h"
#include "coordinator/live_status.h"
#include "simulations/config_check.h"
#include "simulations/simulation.h"
#include "strategies/registry.h"

namespace {

constexpr char kProgram[] = "fedtail-sim";

// "sim-out/<config stem>-<YYYYmmdd-HHMMSS>".
std::string default_out_dir(const std::string& config_path) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &local);
  return "sim-out/" + std::filesystem::path(config_path).stem().string() + "-" + stamp;
}

// Registers the built-in strategies and loads the plugins; false (after saying why) on a failure.
bool load_strategies(const std::vector<std::string>& plugins) {
  fedtail::strategies::register_builtin_strategies();
  for (const std::string& plugin : plugins) {
    fedtail::Status loaded = fedtail::strategies::load_plugin(plugin);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: --plugin %s: %s\n", kProgram, plugin.c_str(),
                   loaded.message().c_str());
      return false;
    }
  }
  return true;
}

// --check: the config with the flags applied, checked without running anything or writing a
// file (simulations/config_check.h); the report on stdout, the libraries' log lines at `log_level`
// on stderr.
int check(const fedtail::simulation::SimulationOptions& options, const std::string& log_level) {
  const spdlog::level::level_enum level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off") {
    std::fprintf(stderr,
                 "%s: --log-level: must be one of trace, debug, info, warn, error, off (got "
                 "\"%s\")\n",
                 kProgram, log_level.c_str());
    return 1;
  }
  auto logger = spdlog::stderr_color_mt("fedtail-sim-check");
  logger->set_level(level);
  spdlog::set_default_logger(logger);
  if (!load_strategies(options.plugins)) return 1;
  fedtail::Result<nlohmann::json> config = fedtail::load_json_file(options.config_path);
  if (!config.ok()) {
    std::printf("check failed: %s\n", config.status().message().c_str());
    return 1;
  }
  const fedtail::Status applied = fedtail::simulation::apply_overrides(options.overrides, &*config);
  if (!applied.ok()) {
    std::printf("check failed: %s\n", applied.message().c_str());
    return 1;
  }
  fedtail::Result<fedtail::simulation::CheckReport> report =
      fedtail::simulation::check_simulation(*config, options.plan, {});
  if (!report.ok()) {
    std::printf("check failed: %s: %s\n", options.config_path.c_str(),
                report.status().message().c_str());
    return 1;
  }
  std::fputs(fedtail::simulation::format_check_report(*report).c_str(), stdout);
  return report->ok() ? 0 : 1;
}

int run(fedtail::simulation::SimulationOptions options, const std::string& http,
        const std::string& http_token_file) {
  if (!load_strategies(options.plugins)) return 1;
  // The dashboard first: a refused --http fails before anything is prepared. It outlives the runs.
  std::unique_ptr<fedtail::coordinator::HttpDashboard> dashboard;
  if (!http.empty()) {
    options.live = std::make_shared<fedtail::coordinator::LiveStatus>();
    fedtail::Result<std::unique_ptr<fedtail::coordinator::HttpDashboard>> made =
        fedtail::coordinator::HttpDashboard::create(http, http_token_file, options.live);
    if (!made.ok()) {
      std::fprintf(stderr, "%s: %s\n", kProgram, made.status().message().c_str());
      return 1;
    }
    dashboard = std::move(made).value();
  }
  fedtail::Result<std::unique_ptr<fedtail::simulation::Simulation>> created =
      fedtail::simulation::Simulation::create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, created.status().message().c_str());
    return 1;
  }
  fedtail::simulation::Simulation& simulation = **created;
  if (dashboard) spdlog::info("dashboard: {}", dashboard->url());
  fedtail::SignalWatcher watcher([&simulation] { simulation.request_stop(); });
  fedtail::Status status = simulation.run();
  if (!simulation.markdown().empty()) {
    std::fputs(simulation.markdown().c_str(), stdout);
    std::fflush(stdout);
  }
  if (status.ok()) {
    spdlog::info("done: results in {} (summary.md, summary.json, metrics.jsonl, *.png)",
                 options.out_dir);
    return 0;
  }
  spdlog::error("{}", status.message());
  if (watcher.signal() != 0) return 128 + watcher.signal();
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  fedtail::simulation::SimulationOptions options;
  std::string strategies;
  bool check_only = false;
  CLI::App app{
      "fedtail simulation: runs a federation (coordinator in-process, clients in worker "
      "processes over loopback, or srun steps of a Slurm allocation with --launcher slurm) for "
      "each strategy and seed of CONFIG, and writes a comparison "
      "table (summary.md, summary.json), metrics.jsonl and accuracy curves (PNG)"};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  app.add_option("config", options.config_path,
                 "simulation config (JSON): a run config with an "
                 "optional \"simulation\" section")
      ->required();
  app.add_option("--out", options.out_dir,
                 "output directory (default: sim-out/<config name>-<date-time>)");
  app.add_option("--workers", options.plan.workers,
                 "worker processes (default: one per core, or per GPU on CUDA)")
      ->check(CLI::PositiveNumber);
  app.add_option("--device", options.device, "workers' device: auto, cpu, cuda, cuda:i");
  app.add_option("--rounds", options.plan.rounds, "rounds of every run (overrides config.rounds)")
      ->check(CLI::PositiveNumber);
  app.add_option("--strategies", strategies,
                 "comma-separated strategy labels or names to run (default: all in the config)");
  app.add_option("--seeds", options.plan.seeds,
                 "seeds per strategy: config.seed, config.seed+1, ... (overrides simulation.seeds)")
      ->check(CLI::PositiveNumber);
  app.add_option(
         "--set", options.overrides,
         "set a config key before anything reads the config, e.g. data.root=/data/cifar10, "
         "local.epochs=1, simulation.seeds=1 (PATH dotted, an array entry by its index; "
         "VALUE is JSON, else a string; null removes the key); repeatable, applied in order")
      ->type_name("PATH=VALUE")
      ->expected(1)
      ->take_all();
  app.add_flag("--check", check_only,
               "check the config with the other flags applied, without running anything or "
               "writing a file: each strategy's options, model and initialization, and its data "
               "set (built once when present); exit 0 when every check passes");
  app.add_flag("--resume", options.resume,
               "continue the simulation in --out: keep finished runs, resume an interrupted one");
  app.add_flag("--overwrite", options.overwrite, "discard an earlier simulation in --out");
  app.add_option("--threads", options.threads,
                 "LibTorch threads per worker (default: cores / workers)")
      ->check(CLI::PositiveNumber);
  app.add_option("--plugin", options.plugins, "strategy plugin (shared library); repeatable");
  app.add_option("--log-level", options.log_level,
                 "trace, debug, info, warn, error, off (sim.log; on a terminal the screen shows "
                 "warnings and a progress bar)")
      ->capture_default_str();
  app.add_option("--worker-log-level", options.worker_log_level, "workers' log level")
      ->capture_default_str();
  app.add_option("--launcher", options.launcher,
                 "how workers start: local (processes on this machine, over loopback) or slurm "
                 "(inside a Slurm allocation, e.g. tools/slurm/fedtail-sim.sbatch: each worker an "
                 "srun step on the allocation's nodes, one per GPU on CUDA, over TLS with join "
                 "tokens made for each run; --out must be on a filesystem all nodes share)")
      ->check(CLI::IsMember({"local", "slurm"}))
      ->capture_default_str();
  app.add_option("--coordinator-host", options.coordinator_host,
                 "slurm: the host name or address workers dial the coordinator by (default: this "
                 "node's host name)");
  app.add_option("--srun-arg", options.srun_args,
                 "slurm: an extra srun argument for every worker step, e.g. --srun-arg=--mem=16G "
                 "(repeatable)")
      ->type_name("ARG")
      ->expected(1)
      ->take_all();
  std::string http;
  std::string http_token_file;
  CLI::Option* http_option =
      app.add_option("--http", http,
                     "serve a live dashboard of the run in progress (/), JSON (/api/status, "
                     "/api/metrics) and Prometheus metrics (/metrics) on HOST:PORT (port 0: any "
                     "free port, logged); read-only; a non-loopback address needs "
                     "--http-token-file (default: off)");
  app.add_option("--http-token-file", http_token_file,
                 "bearer token the dashboard requires (Authorization: Bearer <token>, or "
                 "?token=<token> for the page); at least 32 bytes (`fedtail-certs secret` makes "
                 "one)")
      ->needs(http_option);
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
  size_t begin = 0;
  while (begin <= strategies.size() && !strategies.empty()) {
    size_t comma = strategies.find(',', begin);
    if (comma == std::string::npos) comma = strategies.size();
    std::string name = strategies.substr(begin, comma - begin);
    if (name.empty()) {
      std::fprintf(stderr, "%s: --strategies: an empty name in \"%s\"\n", kProgram,
                   strategies.c_str());
      return 1;
    }
    options.plan.strategies.push_back(name);
    begin = comma + 1;
  }
  for (std::string& plugin : options.plugins) {
    plugin = std::filesystem::absolute(plugin).string();  // workers run elsewhere
  }
  // simulation.devices' trace paths are relative to the config file.
  options.plan.config_dir = std::filesystem::path(options.config_path).parent_path().string();
  if (check_only) {
    // The libraries' info lines would drown the report: warnings only, unless asked.
    const std::string level = app.count("--log-level") > 0 ? options.log_level : "warn";
    try {
      return check(options, level);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", kProgram, e.what());
    } catch (...) {
      std::fprintf(stderr, "%s: unexpected non-standard exception\n", kProgram);
    }
    return 1;
  }
  if (options.out_dir.empty()) {
    if (options.resume) {
      std::fprintf(stderr, "%s: --resume: give the --out directory of the simulation to continue\n",
                   kProgram);
      return 1;
    }
    options.out_dir = default_out_dir(options.config_path);
  }
  options.terminal = ::isatty(STDERR_FILENO) == 1;
  try {
    return run(std::move(options), http, http_token_file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: unexpected exception: %s\n", kProgram, e.what());
  } catch (...) {
    std::fprintf(stderr, "%s: unexpected non-standard exception\n", kProgram);
  }
  return 1;
}
