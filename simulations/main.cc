// fedtail-sim: a whole federation on one machine, one or more strategies and seeds, with a
// comparison table and curves (docs/architecture.md, "The binaries' contract";
// simulations/simulation.h).
//
//   fedtail-sim CONFIG.json [--out DIR] [--workers N] [--device D] [--rounds N]
//       [--strategies a,b] [--seeds N] [--resume | --overwrite] [--threads N] [--plugin LIB.so]...
//       [--log-level L] [--worker-log-level L]
//
// Exit status: 0 when every run completed; 1 on an error or a failed run (one line naming the
// flag, field or file, or the failed runs); 128+signal after SIGINT/SIGTERM (rerun with --resume).
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

#include "common/base/malloc_tuning.h"
#include "common/base/signal_watcher.h"
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

int run(fedtail::simulation::SimulationOptions options) {
  fedtail::strategies::register_builtin_strategies();
  for (const std::string& plugin : options.plugins) {
    fedtail::Status loaded = fedtail::strategies::load_plugin(plugin);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s: --plugin %s: %s\n", kProgram, plugin.c_str(),
                   loaded.message().c_str());
      return 1;
    }
  }
  fedtail::Result<std::unique_ptr<fedtail::simulation::Simulation>> created =
      fedtail::simulation::Simulation::create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, created.status().message().c_str());
    return 1;
  }
  fedtail::simulation::Simulation& simulation = **created;
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
  CLI::App app{
      "fedtail simulation: runs a federation (coordinator in-process, clients in worker "
      "processes over loopback) for each strategy and seed of CONFIG, and writes a comparison "
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
  if (options.out_dir.empty()) {
    if (options.resume) {
      std::fprintf(stderr, "%s: --resume: give the --out directory of the simulation to continue\n",
                   kProgram);
      return 1;
    }
    options.out_dir = default_out_dir(options.config_path);
  }
  for (std::string& plugin : options.plugins) {
    plugin = std::filesystem::absolute(plugin).string();  // workers run elsewhere
  }
  options.terminal = ::isatty(STDERR_FILENO) == 1;
  try {
    return run(std::move(options));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: unexpected exception: %s\n", kProgram, e.what());
  } catch (...) {
    std::fprintf(stderr, "%s: unexpected non-standard exception\n", kProgram);
  }
  return 1;
}
