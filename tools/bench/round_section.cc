#include "tools/bench/round_section.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/base/json_reader.h"
#include "common/base/subprocess.h"
#include "common/data/augment.h"
#include "common/learning/device.h"
#include "tools/bench/scratch.h"
#include "tools/bench/throughput.h"

namespace fedtail::bench {
namespace {

namespace fs = std::filesystem;

// The default federation: the issue's CIFAR-10 round, on Fashion-MNIST so that it runs wherever
// Debian's dataset-fashion-mnist is installed.
constexpr char kDefaultConfig[] = R"({
  "seed": 1,
  "threads": 0,
  "device": "cpu",
  "rounds": 5,
  "data": {"dataset": "fashion-mnist", "imbalance_factor": 100, "partition": "dirichlet",
           "alpha": 0.5, "clients": 40},
  "model": {"arch": "resnet8"},
  "local": {"epochs": 1, "batch_size": 8, "lr": 0.03, "momentum": 0.5, "weight_decay": 0,
            "augment": {"crop_padding": 2, "horizontal_flip": true, "mean": [0.286],
                        "std": [0.353]}},
  "eval": {"batch_size": 1000, "every": 1},
  "strategy": {"name": "fedavg", "fraction_fit": 0.2, "fraction_evaluate": 1.0}
})";

struct Usage {
  double user_s = 0;
  double sys_s = 0;
  int64_t minor_faults = 0;
  int64_t major_faults = 0;
};

// The resources of every child (and grandchild) reaped so far.
Usage children_usage() {
  struct rusage r {};
  getrusage(RUSAGE_CHILDREN, &r);
  Usage u;
  u.user_s = static_cast<double>(r.ru_utime.tv_sec) + r.ru_utime.tv_usec * 1e-6;
  u.sys_s = static_cast<double>(r.ru_stime.tv_sec) + r.ru_stime.tv_usec * 1e-6;
  u.minor_faults = r.ru_minflt;
  u.major_faults = r.ru_majflt;
  return u;
}

// What one fedtail-sim run measured.
struct SimRun {
  nlohmann::json seconds_per_round;  // summary.json runs[0].seconds_per_round
  double train_images = 0;           // per round
  double client_eval_images = 0;     // per round
  double server_eval_images = 0;     // per round
  Usage usage;                       // whole process tree, per round
  double wall_s = 0;
};

// The federation's model and input shape, from its config.
ModelCase model_case(const nlohmann::json& config) {
  ModelCase c;
  c.arch = config.value("model", nlohmann::json::object()).value("arch", "cnn");
  const std::string dataset = config.value("data", nlohmann::json::object()).value("dataset", "");
  const bool gray = dataset == "fashion-mnist" || dataset == "mnist";
  c.channels = gray ? 1 : 3;
  c.size = gray ? 28 : 32;
  c.classes = dataset == "cifar100" ? 100 : 10;
  return c;
}

Result<SimRun> run_simulation(const BenchContext& ctx, const fs::path& config_path,
                              const nlohmann::json& config, int rounds, int workers,
                              const fs::path& out, const std::string& malloc_keep) {
  SubprocessOptions options;
  options.argv = {(fs::path(ctx.bin_dir) / "fedtail-sim").string(),
                  config_path.string(),
                  "--out",
                  out.string(),
                  "--rounds",
                  std::to_string(rounds),
                  "--seeds",
                  "1",
                  "--workers",
                  std::to_string(workers),
                  "--overwrite",
                  "--log-level",
                  "warn"};
  if (const nlohmann::json* sim = config.contains("simulation") ? &config["simulation"] : nullptr;
      sim != nullptr && sim->is_object() && sim->contains("strategies") &&
      (*sim)["strategies"].is_array() && !(*sim)["strategies"].empty()) {
    const nlohmann::json& first = (*sim)["strategies"][0];
    options.argv.push_back("--strategies");
    options.argv.push_back(first.value("label", first.value("name", std::string("fedavg"))));
  }
  if (!malloc_keep.empty()) options.env.push_back("FEDTAIL_MALLOC_KEEP_MB=" + malloc_keep);
  const fs::path log = out.string() + ".log";
  options.log_path = log.string();
  const Usage before = children_usage();
  const auto start = std::chrono::steady_clock::now();
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> sim, Subprocess::spawn(options));
  const int code = sim->wait();
  const Usage after = children_usage();
  SimRun run;
  run.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (code != 0) {
    return Status::Internal("fedtail-sim " + config_path.string() + ": " + sim->describe_exit() +
                            ": " + tail(read_text(log), 3000));
  }
  run.usage.user_s = (after.user_s - before.user_s) / rounds;
  run.usage.sys_s = (after.sys_s - before.sys_s) / rounds;
  run.usage.minor_faults = (after.minor_faults - before.minor_faults) / rounds;
  run.usage.major_faults = (after.major_faults - before.major_faults) / rounds;

  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json summary,
                           parse_json_text(read_text(out / "summary.json")));
  if (!summary.contains("runs") || !summary["runs"].is_array() || summary["runs"].empty()) {
    return Status::Internal((out / "summary.json").string() + ": no runs");
  }
  run.seconds_per_round = summary["runs"][0].value("seconds_per_round", nlohmann::json());

  std::ifstream metrics(out / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    Result<nlohmann::json> parsed = parse_json_text(line);
    if (!parsed.ok()) continue;
    ++lines;
    // Absent keys (a round without evaluation) count as 0.
    using Ptr = nlohmann::json::json_pointer;
    run.train_images += parsed->value(Ptr("/fit/metrics/examples"), 0.0);
    run.client_eval_images += parsed->value(Ptr("/evaluate/metrics/personalized/examples"), 0.0);
    run.server_eval_images += parsed->value(Ptr("/server_eval/generic/examples"), 0.0);
  }
  if (lines > 0) {
    run.train_images /= lines;
    run.client_eval_images /= lines;
    run.server_eval_images /= lines;
  }
  return run;
}

double seconds(const nlohmann::json& per_round, const char* key) {
  return per_round.contains(key) && per_round[key].is_number() ? per_round[key].get<double>() : 0;
}

}  // namespace

Result<nlohmann::json> run_round(const BenchContext& ctx) {
  const fs::path sim = fs::path(ctx.bin_dir) / "fedtail-sim";
  if (!fs::exists(sim)) {
    return Status::NotFound(sim.string() + ": fedtail-sim is not beside fedtail-bench");
  }
  FEDTAIL_ASSIGN_OR_RETURN(ScratchDir scratch, ScratchDir::create("round"));
  const fs::path& dir = scratch.path();

  nlohmann::json config;
  fs::path config_path = ctx.round_config;
  if (config_path.empty()) {
    config_path = dir / "round.json";
    std::ofstream(config_path) << kDefaultConfig;
    config = nlohmann::json::parse(kDefaultConfig);
  } else {
    FEDTAIL_ASSIGN_OR_RETURN(config, parse_json_text(read_text(config_path)));
    if (!config.is_object()) {
      return Status::InvalidArgument(config_path.string() + ": not a JSON object");
    }
  }
  const int rounds = ctx.rounds > 0 ? ctx.rounds : ctx.quick ? 2 : 5;
  const int cores = std::max(1, hardware_threads());
  const int clients = config.value("data", nlohmann::json::object()).value("clients", 1);
  const int workers = std::clamp(cores, 1, std::max(1, clients));
  const int worker_threads = std::max(1, cores / workers);
  const nlohmann::json local = config.value("local", nlohmann::json::object());
  const int train_batch = local.value("batch_size", 32);
  const int epochs = local.value("epochs", 1);
  const int eval_batch = config.value("eval", nlohmann::json::object()).value("batch_size", 512);
  FEDTAIL_ASSIGN_OR_RETURN(AugmentOptions augment,
                           parse_augment_options(local.value("augment", nlohmann::json::object()),
                                                 "config.local.augment"));
  const ModelCase model = model_case(config);

  // Standalone figures first, on the idle machine.
  const StepTiming timing = step_timing(ctx.quick);
  FEDTAIL_ASSIGN_OR_RETURN(Throughput train,
                           measure_throughput(model, StepKind::kTrain, train_batch, worker_threads,
                                              timing, ctx.device, augment));
  FEDTAIL_ASSIGN_OR_RETURN(Throughput worker_eval,
                           measure_throughput(model, StepKind::kEval, eval_batch, worker_threads,
                                              timing, ctx.device, augment));
  FEDTAIL_ASSIGN_OR_RETURN(
      Throughput server_eval,
      measure_throughput(model, StepKind::kEval, eval_batch, cores, timing, ctx.device, augment));
  set_num_threads(0);

  struct Variant {
    const char* name;
    const char* malloc_keep;  // FEDTAIL_MALLOC_KEEP_MB, "" = fedtail's default
  };
  const Variant variants[] = {{"glibc defaults", "0"}, {"fedtail (malloc_tuning)", ""}};
  nlohmann::json section = {
      {"rows", nlohmann::json::array()},
      {"config", ctx.round_config.empty() ? "built-in (fashion-mnist)" : ctx.round_config},
      {"rounds", rounds},
      {"workers", workers},
      {"threads_per_worker", worker_threads}};
  for (const Variant& v : variants) {
    spdlog::info("round: {} rounds of {} with malloc {}", rounds, config_path.string(), v.name);
    FEDTAIL_ASSIGN_OR_RETURN(
        SimRun run, run_simulation(ctx, config_path, config, rounds, workers,
                                   dir / (std::string("sim-") + (v.malloc_keep[0] ? "off" : "on")),
                                   v.malloc_keep));
    const nlohmann::json& t = run.seconds_per_round;
    const double total = seconds(t, "total");
    struct Phase {
      const char* name;
      double seconds;
      double images;
      double standalone;  // images/s of the processes that share the phase, measured alone
    };
    const Phase phases[] = {
        {"training", seconds(t, "fit_s"), run.train_images * epochs, train.images_per_s * workers},
        {"client evaluation", seconds(t, "evaluate_s"), run.client_eval_images,
         worker_eval.images_per_s * workers},
        {"server evaluation", seconds(t, "server_eval_s"), run.server_eval_images,
         server_eval.images_per_s},
        {"uploads (sum over clients)", seconds(t, "fit_upload_s") + seconds(t, "evaluate_upload_s"),
         0, 0},
        {"aggregation", seconds(t, "aggregate_s"), 0, 0},
        {"other", seconds(t, "other_s"), 0, 0},
    };
    const bool tuned = v.malloc_keep[0] == '\0';
    const std::string suffix = tuned ? "" : "_untuned";
    for (const Phase& p : phases) {
      nlohmann::json row = {{"malloc", v.name}, {"phase", p.name}, {"s_per_round", p.seconds}};
      if (p.images > 0 && p.seconds > 0) {
        const double rate = p.images / p.seconds;
        row["images_per_round"] = p.images;
        row["images_per_s"] = rate;
        row["standalone_images_per_s"] = p.standalone;
        row["efficiency"] = rate / p.standalone;
        std::string key = p.name;
        std::replace(key.begin(), key.end(), ' ', '_');
        section["efficiency_" + key + suffix] = rate / p.standalone;
      }
      section["rows"].push_back(row);
    }
    const double fit_compute = seconds(t, "fit_compute_s");
    if (fit_compute > 0 && run.train_images > 0) {
      const double rate = run.train_images * epochs / fit_compute;
      section["rows"].push_back({{"malloc", v.name},
                                 {"phase", "training (client compute only)"},
                                 {"s_per_round", fit_compute},
                                 {"images_per_round", run.train_images * epochs},
                                 {"images_per_s", rate},
                                 {"standalone_images_per_s", train.images_per_s},
                                 {"efficiency", rate / train.images_per_s}});
      section["efficiency_training_compute" + suffix] = rate / train.images_per_s;
    }
    section["rows"].push_back({{"malloc", v.name},
                               {"phase", "round"},
                               {"s_per_round", total},
                               {"user_s", run.usage.user_s},
                               {"sys_s", run.usage.sys_s},
                               {"minor_faults", run.usage.minor_faults},
                               {"major_faults", run.usage.major_faults}});
    section["seconds_per_round" + suffix] = total;
    section["user_s_per_round" + suffix] = run.usage.user_s;
    section["sys_s_per_round" + suffix] = run.usage.sys_s;
    section["minor_faults_per_round" + suffix] = run.usage.minor_faults;
    spdlog::info(
        "round: malloc {}: {:.2f} s per round, user {:.1f} s, sys {:.1f} s, {} minor "
        "faults per round",
        v.name, total, run.usage.user_s, run.usage.sys_s, run.usage.minor_faults);
  }
  if (section.contains("seconds_per_round_untuned") && section["seconds_per_round"] > 0) {
    section["speedup"] = section["seconds_per_round_untuned"].get<double>() /
                         section["seconds_per_round"].get<double>();
  }
  return section;
}

}  // namespace fedtail::bench
