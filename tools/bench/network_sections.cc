#include "tools/bench/network_sections.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/base/buffer_pool.h"
#include "common/base/subprocess.h"
#include "tools/bench/data_sections.h"
#include "tools/bench/loopback_federation.h"
#include "tools/bench/scratch.h"

namespace fedtail::bench {
namespace {

constexpr double kMB = 1e6;
// Fashion-MNIST as Debian's dataset-fashion-mnist installs it (the data set's default root).
constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";

// Mean of `values` without the first `skip` (warm-up) entries; 0 when none are left.
double mean_after(const std::vector<double>& values, size_t skip) {
  if (values.size() <= skip) return 0;
  return std::accumulate(values.begin() + static_cast<std::ptrdiff_t>(skip), values.end(), 0.0) /
         static_cast<double>(values.size() - skip);
}

struct LoopbackRun {
  std::vector<ClientTimings> clients;
  std::vector<double> round_seconds;
};

// Runs a loopback federation with options.clients bench clients, one thread each.
// The engine's and clients' per-round info lines are not shown (warnings and errors are).
Result<LoopbackRun> run_loopback(const LoopbackOptions& options) {
  struct QuietLog {
    spdlog::level::level_enum saved = spdlog::get_level();
    QuietLog() {
      if (saved < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
    }
    ~QuietLog() { spdlog::set_level(saved); }
  } quiet;
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<LoopbackFederation> federation,
                           LoopbackFederation::start(options));
  std::vector<Status> statuses(options.clients);
  LoopbackRun run;
  run.clients.resize(options.clients);
  std::vector<std::thread> threads;
  for (int k = 0; k < options.clients; ++k) {
    threads.emplace_back([&, k] {
      Result<ClientTimings> timings =
          run_bench_client(federation->target(), "client-" + std::to_string(k));
      if (timings.ok()) {
        run.clients[k] = std::move(timings).value();
      } else {
        statuses[k] = timings.status();
        federation->stop();
      }
    });
  }
  Status status = federation->wait();
  for (std::thread& t : threads) t.join();
  for (const Status& s : statuses) FEDTAIL_RETURN_IF_ERROR(s.with_context("bench client"));
  FEDTAIL_RETURN_IF_ERROR(status.with_context("loopback federation"));
  run.round_seconds = federation->round_seconds();
  return run;
}

// ---- "coordinator" part 2: a real fedtail-coordinator process ----

// VmHWM (peak resident set) of `pid` in kB; -1 when unreadable (e.g. it has exited).
int64_t peak_rss_kb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

struct ProcessRun {
  int64_t peak_rss_kb = 0;
  double round_seconds = 0;
  double update_mb = 0;
};

// `rounds` rounds of FedAvg with `arch` (resnet18: ~45 MB updates; cnn: ~1.7 MB):
// fedtail-coordinator, and one fedtail-client process hosting `clients` virtual clients that take
// one SGD step each on an IID share of `examples_per_class` × 10 Fashion-MNIST images.
Result<ProcessRun> run_processes(const BenchContext& ctx, int clients, int rounds,
                                 const std::string& arch, int examples_per_class,
                                 const std::string& dir) {
  namespace fs = std::filesystem;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const nlohmann::json config = {
      {"seed", 1},
      {"threads", 1},
      {"device", "cpu"},
      {"rounds", rounds},
      {"strategy", {{"name", "fedavg"}, {"min_fit_clients", clients}, {"fraction_evaluate", 0.0}}},
      {"federation",
       {{"min_available_clients", clients},
        {"round_timeout_s", 3600},
        {"poll_timeout_ms", 2000},
        {"heartbeat_interval_ms", 2000},
        {"client_timeout_s", 300},
        {"server_eval", false}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"max_examples_per_class", examples_per_class},
        {"imbalance_factor", 1},
        {"partition", "iid"},
        {"clients", clients}}},
      {"model", {{"arch", arch}}},
      {"local", {{"max_steps", 1}, {"batch_size", 2}}}};
  std::ofstream(dir + "/run.json") << config.dump(2);

  SubprocessOptions coordinator_options;
  coordinator_options.argv = {ctx.bin_dir + "/fedtail-coordinator",
                              "--config",
                              dir + "/run.json",
                              "--listen",
                              "127.0.0.1:0",
                              "--state-dir",
                              dir + "/state",
                              "--threads",
                              "1"};
  coordinator_options.log_path = dir + "/coordinator.log";
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> coordinator,
                           Subprocess::spawn(coordinator_options));
  std::string port;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (port.empty()) {
    const std::string text = read_text(dir + "/state/port");
    if (!text.empty() && text.back() == '\n') port = text.substr(0, text.size() - 1);
    if (coordinator->poll() || std::chrono::steady_clock::now() > deadline) {
      return Status::Internal("fedtail-coordinator did not come up (" +
                              coordinator->describe_exit() +
                              "): " + tail(read_text(coordinator_options.log_path)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  SubprocessOptions client_options;
  client_options.argv = {ctx.bin_dir + "/fedtail-client",
                         "--coordinator",
                         "127.0.0.1:" + port,
                         "--clients",
                         "0-" + std::to_string(clients - 1),
                         "--state-dir",
                         ":memory:",
                         "--device",
                         "cpu",
                         "--threads",
                         "1"};
  client_options.log_path = dir + "/clients.log";
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> worker, Subprocess::spawn(client_options));

  // VmHWM only grows: the last reading before the process ends is its peak (to within 50 ms).
  ProcessRun run;
  const auto run_deadline = std::chrono::steady_clock::now() + std::chrono::hours(1);
  while (!coordinator->poll()) {
    const int64_t kb = peak_rss_kb(coordinator->pid());
    if (kb > run.peak_rss_kb) run.peak_rss_kb = kb;
    if (std::chrono::steady_clock::now() > run_deadline) {
      coordinator->kill();
      return Status::DeadlineExceeded("fedtail-coordinator: no result within an hour");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (coordinator->exit_code() != 0) {
    return Status::Internal("fedtail-coordinator failed (" + coordinator->describe_exit() +
                            "): " + tail(read_text(coordinator_options.log_path)) +
                            "\n--- clients:\n" + tail(read_text(client_options.log_path)));
  }
  if (!worker->wait_for(std::chrono::seconds(60))) worker->kill();

  // Mean round time; update size from the first round.
  std::istringstream metrics(read_text(dir + "/state/metrics.jsonl"));
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object() || !record.contains("fit")) {
      return Status::Internal(dir + "/state/metrics.jsonl: unexpected line " + line);
    }
    run.round_seconds += record.value("seconds", 0.0);
    const int64_t updates = record["fit"].value("updates", int64_t{0});
    if (lines++ == 0 && updates > 0) {
      run.update_mb = record["fit"].value("bytes_up", 0.0) / static_cast<double>(updates) / kMB;
    }
  }
  if (lines != rounds) {
    return Status::Internal(dir + "/state/metrics.jsonl: " + std::to_string(lines) + " lines for " +
                            std::to_string(rounds) + " rounds");
  }
  run.round_seconds /= rounds;
  return run;
}

}  // namespace

Result<nlohmann::json> run_transport(const BenchContext& ctx) {
  const std::vector<int64_t> sizes_mb =
      ctx.quick ? std::vector<int64_t>{1, 100} : std::vector<int64_t>{1, 100, 1000};
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json section = nlohmann::json::object();
  const uint64_t cache_limit = buffer_cache_limit();
  for (int64_t size_mb : sizes_mb) {
    const int repeats = size_mb <= 1     ? (ctx.quick ? 5 : 20)
                        : size_mb <= 100 ? (ctx.quick ? 2 : 5)
                                         : 2;
    const double bytes = static_cast<double>(size_mb) * kMB;
    const double memcpy_rate =
        memcpy_bytes_per_s(static_cast<size_t>(bytes), ctx.quick ? 0.2 : 1.0) / kMB;
    // The same transfers with the buffer cache off (every decoded bundle in freshly faulted
    // memory: the figure before the cache) and on (the default; common/base/buffer_pool.h).
    for (const bool cache : {false, true}) {
      set_buffer_cache_limit(cache ? cache_limit : 0);
      trim_buffer_cache();
      LoopbackOptions options;
      options.rounds = repeats + 1;  // the first is a warm-up
      options.clients = 1;
      options.floats = size_mb * static_cast<int64_t>(kMB) / 4;
      Result<LoopbackRun> run = run_loopback(options);
      set_buffer_cache_limit(cache_limit);
      FEDTAIL_RETURN_IF_ERROR(run.status());
      const ClientTimings& t = run->clients.at(0);
      if (static_cast<int>(t.push_seconds.size()) != options.rounds) {
        return Status::Internal("transport: " + std::to_string(t.push_seconds.size()) +
                                " uploads for " + std::to_string(options.rounds) + " rounds");
      }
      const double up_s = mean_after(t.push_seconds, 1);
      const double down_s = mean_after(t.pull_seconds, 1);
      for (const auto& [direction, seconds, first] :
           {std::tuple<const char*, double, double>{"up (PushResult)", up_s, t.push_seconds[0]},
            {"down (PullTask)", down_s, t.pull_seconds[0]}}) {
        const double rate = bytes / seconds / kMB;
        spdlog::info(
            "transport {} MB {}, buffer cache {}: {:.1f} MB/s ({:.3f} s each, first {:.3f} s; "
            "memcpy {:.0f} MB/s)",
            size_mb, direction, cache ? "on" : "off", rate, seconds, first, memcpy_rate);
        rows.push_back({{"size_mb", size_mb},
                        {"direction", direction},
                        {"buffer_cache", cache ? "on" : "off"},
                        {"mb_per_s", rate},
                        {"seconds_each", seconds},
                        {"seconds_first", first},
                        {"repeats", repeats},
                        {"memcpy_mb_per_s", memcpy_rate},
                        {"fraction_of_memcpy", rate / memcpy_rate}});
      }
      const std::string suffix = size_mb == 100    ? "100mb"
                                 : size_mb == 1000 ? "1gb"
                                                   : std::to_string(size_mb) + "mb";
      const std::string off = cache ? "" : "_cache_off";
      section["mb_per_s_" + suffix + off] = bytes / up_s / kMB;
      section["mb_per_s_" + suffix + "_down" + off] = bytes / down_s / kMB;
    }
    if (size_mb == 100) section["memcpy_mb_per_s_100mb"] = memcpy_rate;
  }
  section["rows"] = rows;
  return section;
}

Result<nlohmann::json> run_coordinator(const BenchContext& ctx) {
  namespace fs = std::filesystem;
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json section = nlohmann::json::object();

  // (1) Overhead per client per round: clients that answer at once, a tiny model.
  constexpr int64_t kTinyFloats = 25'000;
  const std::vector<int> overhead_clients =
      ctx.quick ? std::vector<int>{10, 50, 200} : std::vector<int>{10, 50, 1000};
  for (int clients : overhead_clients) {
    LoopbackOptions options;
    options.rounds = 1 + (ctx.quick ? 3 : clients >= 1000 ? 5 : 10);  // the first is a warm-up
    options.clients = clients;
    options.floats = kTinyFloats;
    options.average = true;
    FEDTAIL_ASSIGN_OR_RETURN(LoopbackRun run, run_loopback(options));
    const double round_s = mean_after(run.round_seconds, 1);
    const double per_client_ms = round_s * 1000 / clients;
    spdlog::info(
        "coordinator overhead, {} clients: {:.2f} ms per client per round ({:.3f} s/round)",
        clients, per_client_ms, round_s);
    rows.push_back({{"measure", "overhead, in-process service"},
                    {"clients", clients},
                    {"rounds", options.rounds - 1},
                    {"model_mb", static_cast<double>(kTinyFloats) * 4 / kMB},
                    {"round_s", round_s},
                    {"ms_per_client_per_round", per_client_ms}});
    section[clients == overhead_clients.back()
                ? std::string("overhead_ms_per_client")
                : "overhead_ms_per_client_" + std::to_string(clients) + "_clients"] = per_client_ms;
    if (clients == overhead_clients.back()) section["overhead_clients"] = clients;
  }

  // (2) Peak RSS of a real coordinator process with 10 and 50 clients sending ~45 MB updates.
  // Without the binaries or the data set the rows are left out, with the reason in the section.
  std::string missing;
  for (const char* binary : {"fedtail-coordinator", "fedtail-client"}) {
    if (!fs::exists(ctx.bin_dir + "/" + binary)) {
      missing = ctx.bin_dir + "/" + binary + " is not built";
    }
  }
  if (missing.empty() && !fs::exists(kFashionMnist)) {
    missing = std::string(kFashionMnist) + " is not installed (dataset-fashion-mnist)";
  }
  if (!missing.empty()) {
    spdlog::warn("coordinator peak RSS skipped: {}", missing);
    section["peak_rss_skipped"] = missing;
    section["rows"] = rows;
    return section;
  }
  const std::string scratch =
      (fs::temp_directory_path() / ("fedtail-bench." + std::to_string(::getpid()))).string();
  // 10 clients for 1 and for 5 rounds, and 50 clients for 1 round: 10 × 5 and 50 × 1 fold the
  // same number of uploads, so their peaks compare the number of clients alone (the allocator's
  // high-water mark grows with the uploads processed, up to a plateau).
  // And 1000 clients (200 with --quick) of the small CNN for 2 rounds: the coordinator's memory
  // with many connected clients and a tiny model (summary peak_rss_mb).
  struct Case {
    int clients;
    int rounds;
    const char* arch;
    int examples_per_class;
    std::string key;
  };
  const int many = ctx.quick ? 200 : 1000;
  for (const Case& c : {Case{10, 1, "resnet18", 20, "peak_rss_mb_resnet18_10_clients_1_round"},
                        Case{10, 5, "resnet18", 20, "peak_rss_mb_resnet18_10_clients"},
                        Case{50, 1, "resnet18", 20, "peak_rss_mb_resnet18_50_clients"},
                        Case{many, 2, "cnn", many / 5, "peak_rss_mb"}}) {
    spdlog::info(
        "coordinator peak RSS: fedtail-coordinator + {} virtual clients ({}), {} "
        "round(s) ...",
        c.clients, c.arch, c.rounds);
    const std::string tag =
        std::string(c.arch) + "-" + std::to_string(c.clients) + "x" + std::to_string(c.rounds);
    Result<ProcessRun> run = run_processes(ctx, c.clients, c.rounds, c.arch, c.examples_per_class,
                                           scratch + "/rss-" + tag);
    if (!run.ok()) {
      return run.status().with_context("peak RSS with " + tag + " clients x rounds (files in " +
                                       scratch + ")");
    }
    const double rss_mb = static_cast<double>(run->peak_rss_kb) * 1024 / kMB;
    spdlog::info("coordinator peak RSS, {} clients × {} round(s) of {:.1f} MB updates: {:.0f} MB",
                 c.clients, c.rounds, run->update_mb, rss_mb);
    rows.push_back({{"measure", "peak RSS, fedtail-coordinator process, " + std::string(c.arch)},
                    {"clients", c.clients},
                    {"rounds", c.rounds},
                    {"model_mb", run->update_mb},
                    {"round_s", run->round_seconds},
                    {"peak_rss_mb", rss_mb}});
    section[c.key] = rss_mb;
    if (c.key == "peak_rss_mb") section["peak_rss_clients"] = c.clients;
  }
  std::error_code ec;
  fs::remove_all(scratch, ec);
  section["rows"] = rows;
  return section;
}

}  // namespace fedtail::bench
