// fedtail-bench: throughput benchmarks of fedtail's building blocks.
//
//   fedtail-bench [--quick] [--out DIR] [--device cpu|cuda|auto] [--sections a,b] [--models a,b]
//       [--round-config FILE] [--rounds N]
//
// Writes DIR/bench.json ({"<section>": ..., "machine": {...}}) and DIR/bench.md (one table per
// section). A section's value is an array of rows, or, for sections with summary figures, an
// object {"rows": [...], "<summary key>": number, ...}. Sections today:
//   "training" and "evaluation" (rows): images/s of a local SGD step, augmentation included, and
//     of a no-grad forward pass, for cnn, resnet8 and resnet18 at batch 8 and 32 on random uint8
//     3×32×32 inputs (and 1×28×28 for cnn), with 1 thread and all threads. Warm-up steps are
//     excluded from the timing.
//   "aggregation" and "serialization" (objects; tools/bench/data_sections.h): GB/s of FedAvg's
//     streaming weighted average and of the chunked bundle codec, each beside a memcpy of the same
//     bytes in the same run; summaries aggregation.ratio_to_memcpy, serialization.ratio_to_memcpy.
//   "transport" (object; tools/bench/network_sections.h): MB/s of a 1 MB, 100 MB (and 1 GB)
//     TensorBundle through the real PushResult and PullTask paths on loopback, beside memcpy, with
//     the buffer cache off and on; summary transport.mb_per_s_100mb (upload), mb_per_s_100mb_down,
//     memcpy_mb_per_s_100mb (and per size, and _cache_off).
//   "coordinator" (object; same header): ms per client per round of the coordinator's service
//     with 10 and 50 clients that answer at once, and the peak RSS of a real fedtail-coordinator
//     process with 10 and 50 clients sending ~45 MB updates; summary
//     coordinator.overhead_ms_per_client and coordinator.peak_rss_mb (50 clients; the 10-client
//     figures beside them). Needs fedtail-coordinator and fedtail-client beside fedtail-bench and
//     Fashion-MNIST.
//   "secagg" (object; tools/bench/secagg_section.h): SecAgg+ beside FedAvg for 10, 100 and 1000
//     clients of a 1 M-parameter model: client CPU ms, coordinator seconds, key-exchange bytes;
//     summary secagg.client_cpu_ms_<n>, coordinator_s_<n>, fedavg_coordinator_s_<n>.
//   "round" (object; tools/bench/round_section.h): a simulated federation through fedtail-sim,
//     with glibc's malloc defaults and with fedtail's: seconds per round by phase, user/sys CPU and
//     page faults of the whole process tree, and each phase's images/s against the same model
//     measured alone (the efficiency); summary seconds_per_round[_untuned], speedup,
//     efficiency_<phase>.
//   "pytorch" (object; tools/bench/pytorch_section.h): fedtail's training (batch 8, 32) and
//     evaluation (batch 512) images/s beside Python PyTorch's for the same model and step;
//     summary ratio_<model>_<mode>_b<batch>. Skipped (with the reason) without python3-torch.
// --quick runs fewer steps and smaller sizes (a smoke run, noisier figures).
//
// Adding a section: write a `Result<nlohmann::json> run_x(const BenchContext&)` returning an array
// of flat row objects (or {"rows": [...], summary keys...}), and append {name, title, columns,
// run_x} to sections() below.
// Errors: one line on stderr, exit 1.
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/base/logging.h"
#include "common/base/malloc_tuning.h"
#include "common/base/rng.h"
#include "common/data/augment.h"
#include "common/learning/device.h"
#include "common/learning/models.h"
#include "tools/bench/bench_context.h"
#include "tools/bench/data_sections.h"
#include "tools/bench/network_sections.h"
#include "tools/bench/pytorch_section.h"
#include "tools/bench/round_section.h"
#include "tools/bench/secagg_section.h"
#include "tools/bench/throughput.h"

namespace fedtail {
namespace {

struct Flags {
  bool quick = false;
  std::string out = "bench";
  std::string device = "cpu";
  std::vector<std::string> sections;
  std::vector<std::string> models;
  std::string round_config;
  int rounds = 0;
};

using bench::BenchContext;

// One model/input configuration of the training and evaluation sections.
const std::vector<bench::ModelCase>& model_cases() {
  static const std::vector<bench::ModelCase> kCases = {
      {"cnn", 1, 28, 10}, {"cnn", 3, 32, 10}, {"resnet8", 3, 32, 10}, {"resnet18", 3, 32, 10}};
  return kCases;
}

const std::vector<int>& batch_sizes() {
  static const std::vector<int> kBatches = {8, 32};
  return kBatches;
}

// Rows {"model", "input", "batch", "threads", "images_per_s", "steps", "seconds"} for every model
// case × batch size × thread count (tools/bench/throughput.h).
Result<nlohmann::json> run_throughput(const BenchContext& ctx, bench::StepKind kind) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& c : model_cases()) {
    if (!ctx.models.empty() &&
        std::find(ctx.models.begin(), ctx.models.end(), c.arch) == ctx.models.end()) {
      continue;
    }
    for (int batch : batch_sizes()) {
      for (int threads : ctx.thread_counts) {
        FEDTAIL_ASSIGN_OR_RETURN(
            bench::Throughput m,
            bench::measure_throughput(c, kind, batch, threads, bench::step_timing(ctx.quick),
                                      ctx.device));
        spdlog::info("{} {} {} batch {} threads {}: {:.1f} images/s",
                     kind == bench::StepKind::kTrain ? "train" : "eval", c.arch,
                     bench::input_name(c), batch, threads, m.images_per_s);
        rows.push_back({{"model", c.arch},
                        {"input", bench::input_name(c)},
                        {"batch", batch},
                        {"threads", threads},
                        {"images_per_s", m.images_per_s},
                        {"steps", m.steps},
                        {"seconds", m.seconds}});
      }
    }
  }
  return rows;
}

struct Section {
  std::string name;                  // key in bench.json
  std::string title;                 // heading in bench.md
  std::vector<std::string> columns;  // row keys shown in bench.md, in order
  std::function<Result<nlohmann::json>(const BenchContext&)> run;
};

const std::vector<Section>& sections() {
  static const std::vector<Section> kSections = {
      {"training",
       "Training throughput (images/s: augmentation + forward + backward + SGD step)",
       {"model", "input", "batch", "threads", "images_per_s"},
       [](const BenchContext& ctx) { return run_throughput(ctx, bench::StepKind::kTrain); }},
      {"evaluation",
       "Evaluation throughput (images/s: normalisation + no-grad forward + argmax)",
       {"model", "input", "batch", "threads", "images_per_s"},
       [](const BenchContext& ctx) { return run_throughput(ctx, bench::StepKind::kEval); }},
      {"aggregation",
       "Aggregation (GB/s of update bytes folded by FedAvg's streaming weighted average, vs "
       "memcpy)",
       {"measure", "model", "update_mb", "updates", "group", "gb_per_s", "memcpy_gb_per_s",
        "ratio_to_memcpy"},
       bench::run_aggregation},
      {"serialization",
       "Serialisation (GB/s: TensorBundle -> 1 MiB chunks -> TensorBundle, digest both sides, "
       "vs memcpy)",
       {"measure", "model", "update_mb", "gb_per_s", "memcpy_gb_per_s", "ratio_to_memcpy"},
       bench::run_serialization},
      {"transport",
       "Transport (MB/s of a TensorBundle through PushResult / PullTask on loopback, vs memcpy)",
       {"size_mb", "direction", "buffer_cache", "mb_per_s", "seconds_each", "seconds_first",
        "memcpy_mb_per_s", "fraction_of_memcpy"},
       bench::run_transport},
      {"coordinator",
       "Coordinator (overhead per client per round; peak RSS of fedtail-coordinator)",
       {"measure", "clients", "rounds", "model_mb", "round_s", "ms_per_client_per_round",
        "peak_rss_mb"},
       bench::run_coordinator},
      {"secagg",
       "Secure aggregation (SecAgg+ beside FedAvg, 1 M-parameter model: CPU per client, "
       "coordinator CPU per round, bytes per client)",
       {"protocol", "clients", "neighbours", "client_cpu_ms", "coordinator_s", "upload_mb",
        "download_mb", "overhead_kb"},
       bench::run_secagg},
      {"round",
       "Round (a simulated federation through fedtail-sim: seconds per round by phase, CPU and "
       "page faults of the process tree, images/s against the same model measured alone)",
       {"malloc", "phase", "s_per_round", "images_per_round", "images_per_s",
        "standalone_images_per_s", "efficiency", "user_s", "sys_s", "minor_faults", "major_faults"},
       bench::run_round},
      {"pytorch",
       "PyTorch reference (images/s of the same model and step in Python PyTorch, same run)",
       {"model", "input", "mode", "batch", "threads", "fedtail_images_per_s",
        "pytorch_images_per_s", "ratio"},
       bench::run_pytorch},
  };
  return kSections;
}

std::string cell(const nlohmann::json& v) {
  if (v.is_number_float()) {
    // One decimal, or three significant digits below 1 (seconds, ratios).
    const double x = v.get<double>();
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), x != 0 && std::abs(x) < 1 ? "%.3g" : "%.1f", x);
    return buffer;
  }
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

// The rows of a section's result: the result itself (an array), or its "rows".
const nlohmann::json& section_rows(const nlohmann::json& result) {
  static const nlohmann::json kNone = nlohmann::json::array();
  if (result.is_array()) return result;
  auto it = result.find("rows");
  return it != result.end() ? *it : kNone;
}

std::string markdown_table(const Section& section, const nlohmann::json& result) {
  const nlohmann::json& rows = section_rows(result);
  std::ostringstream md;
  md << "## " << section.title << "\n\n|";
  for (const auto& c : section.columns) md << " " << c << " |";
  md << "\n|";
  for (size_t i = 0; i < section.columns.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& row : rows) {
    md << "|";
    for (const auto& c : section.columns)
      md << " " << (row.contains(c) ? cell(row[c]) : "") << " |";
    md << "\n";
  }
  // Summary figures of an object result, as "key: value" lines under the table.
  if (result.is_object()) {
    bool first = true;
    for (const auto& [key, value] : result.items()) {
      if (key == "rows") continue;
      md << (first ? "\n" : "") << "- " << section.name << "." << key << ": " << cell(value)
         << "\n";
      first = false;
    }
  }
  return md.str();
}

// The 1-minute load average: throughput figures from a busy machine are not comparable.
double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

// OMP_WAIT_POLICY as set in the environment. With the default (spinning) policy, more threads than
// free cores collapse OpenMP throughput by 10-50x; PASSIVE avoids that on a shared machine.
std::string omp_wait_policy() {
  const char* v = std::getenv("OMP_WAIT_POLICY");
  return v ? v : "default";
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

nlohmann::json machine_info(const Flags& flags, const BenchContext& ctx) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  char when[32] = {0};
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return {
      {"hostname", host},
      {"cpu", cpu_model()},
      {"hardware_threads", hardware_threads()},
      {"device", device_name(ctx.device)},
      {"cuda_devices", torch::cuda::is_available() ? torch::cuda::device_count() : 0},
      {"torch_version", TORCH_VERSION},
      {"fedtail_version", FEDTAIL_VERSION},
      {"quick", flags.quick},
      {"load_average_1min", load_average()},
      {"omp_wait_policy", omp_wait_policy()},
      {"malloc_keep_mb", malloc_tuning().applied ? nlohmann::json(malloc_tuning().keep_bytes >> 20)
                                                 : nlohmann::json(malloc_tuning().note)},
      {"utc_time", when}};
}

Status write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return Status::IOError(path.string() + ": cannot write");
  return Status::OK();
}

Status run(const Flags& flags) {
  FEDTAIL_ASSIGN_OR_RETURN(torch::Device device, parse_device(flags.device));
  BenchContext ctx;
  ctx.quick = flags.quick;
  ctx.device = device;
  ctx.models = flags.models;
  ctx.round_config = flags.round_config;
  ctx.rounds = flags.rounds;
  for (const auto& m : flags.models) {
    bool known = false;
    for (const auto& c : model_cases()) known = known || c.arch == m;
    if (!known) return Status::InvalidArgument("--models: unknown model \"" + m + "\"");
  }
  std::error_code ec;
  ctx.bin_dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().string();
  ctx.thread_counts = {1};
  if (hardware_threads() > 1) ctx.thread_counts.push_back(hardware_threads());

  std::vector<const Section*> chosen;
  for (const auto& s : sections()) {
    bool wanted = flags.sections.empty();
    for (const auto& name : flags.sections) wanted = wanted || name == s.name;
    if (wanted) chosen.push_back(&s);
  }
  for (const auto& name : flags.sections) {
    bool known = false;
    for (const auto& s : sections()) known = known || s.name == name;
    if (!known) {
      std::string names;
      for (const auto& s : sections()) names += (names.empty() ? "" : ", ") + s.name;
      return Status::InvalidArgument("--sections: unknown section \"" + name +
                                     "\" (known: " + names + ")");
    }
  }

  std::filesystem::create_directories(flags.out, ec);
  if (ec) return Status::IOError(flags.out + ": cannot create directory (" + ec.message() + ")");

  nlohmann::json report = nlohmann::json::object();
  report["machine"] = machine_info(flags, ctx);
  std::string md = "# fedtail-bench" + std::string(flags.quick ? " (--quick)" : "") + "\n\n";
  md += "Device " + device_name(device) + ", " + std::to_string(hardware_threads()) +
        " hardware threads, " + cpu_model() + ", LibTorch " + TORCH_VERSION + ", load average " +
        std::to_string(load_average()).substr(0, 4) + " at start, OMP_WAIT_POLICY " +
        omp_wait_policy() + ".\n\n";
  for (const Section* s : chosen) {
    spdlog::info("section {}", s->name);
    auto rows = s->run(ctx);
    if (!rows.ok()) return rows.status().with_context(s->name);
    report[s->name] = *rows;
    md += markdown_table(*s, *rows) + "\n";
  }
  set_num_threads(0);
  const std::filesystem::path dir(flags.out);
  FEDTAIL_RETURN_IF_ERROR(write_file(dir / "bench.json", report.dump(2) + "\n"));
  FEDTAIL_RETURN_IF_ERROR(write_file(dir / "bench.md", md));
  std::printf("%s", md.c_str());
  spdlog::info("wrote {} and {}", (dir / "bench.json").string(), (dir / "bench.md").string());
  return Status::OK();
}

}  // namespace
}  // namespace fedtail

int main(int argc, char** argv) {
  fedtail::tune_malloc();  // first: before any thread or large allocation
  fedtail::Flags flags;
  CLI::App app{"fedtail-bench: throughput benchmarks; writes DIR/bench.json and DIR/bench.md"};
  app.set_version_flag("--version", FEDTAIL_VERSION);
  app.add_flag("--quick", flags.quick, "fewer steps per measurement (a smoke run)");
  app.add_option("--out", flags.out, "output directory")->capture_default_str();
  app.add_option("--device", flags.device, "auto, cpu, cuda or cuda:<i>")->capture_default_str();
  app.add_option("--sections", flags.sections,
                 "comma-separated sections (default: all): training, evaluation, aggregation, "
                 "serialization, transport, coordinator, secagg, round, pytorch")
      ->delimiter(',');
  app.add_option("--models", flags.models,
                 "comma-separated architectures of the training/evaluation sections (default: "
                 "cnn,resnet8,resnet18)")
      ->delimiter(',');
  app.add_option("--round-config", flags.round_config,
                 "simulation config of the round section (default: a built-in Fashion-MNIST-LT "
                 "federation of 40 clients, ResNet-8)")
      ->check(CLI::ExistingFile);
  app.add_option("--rounds", flags.rounds, "rounds of the round section (default 5, --quick 2)")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fedtail-bench: %s (see --help)\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 1;
  }
  if (auto s = fedtail::init_logging("fedtail-bench"); !s.ok()) {
    std::fprintf(stderr, "fedtail-bench: %s\n", s.message().c_str());
    return 1;
  }
  fedtail::Status status = fedtail::run(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "fedtail-bench: %s\n", status.message().c_str());
    return 1;
  }
  return 0;
}
