// Integration test of fedtail-coordinator --http (coordinator/http_dashboard.h): a real coordinator
// and real clients over loopback; the dashboard's JSON, its Prometheus text (parsed strictly and
// checked against metrics.jsonl), its access rules, and the page rendered by headless Chromium.
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "tests/support/cli.h"
#include "tests/support/federation_processes.h"
#include "tests/support/process.h"
#include "tests/support/prometheus_parser.h"

namespace fedtail {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::Process;

constexpr int kRounds = 8;
// A 64-character token (read_secret_file wants at least 32 bytes).
constexpr char kToken[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// Three clients in the data; the run waits for `min_clients` of them.
nlohmann::json run_config(int min_clients) {
  return {{"seed", 1},
          {"threads", 1},
          {"device", "cpu"},
          {"rounds", kRounds},
          {"strategy", {{"name", "fedavg"}, {"min_fit_clients", min_clients}}},
          {"federation",
           {{"min_available_clients", min_clients},
            {"round_timeout_s", 120},
            {"poll_timeout_ms", 2000},
            {"heartbeat_interval_ms", 1000},
            {"client_timeout_s", 30}}},
          {"data",
           {{"dataset", "fashion-mnist"},
            {"max_examples_per_class", 100},
            {"imbalance_factor", 10},
            {"partition", "dirichlet"},
            {"alpha", 1.0},
            {"clients", 3}}},
          {"model", {{"arch", "cnn"}}},
          {"local", {{"epochs", 1}, {"batch_size", 32}}},
          // Evaluation (server-side: the accuracy gauges) at rounds 4 and 8.
          {"eval", {{"batch_size", 500}, {"every", kRounds / 2}}}};
}

// The headless browser, or "" when none is installed.
std::string find_chromium() {
  for (const char* path : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
    if (fs::exists(path)) return path;
  }
  return "";
}

// Runs headless Chromium on `url` with `args` (e.g. "--dump-dom"); its stdout.
test_support::CliRun run_chromium(const std::string& chromium, const std::string& profile,
                                  const std::string& args, const std::string& url) {
  return test_support::run_cli("timeout", "40 " + chromium +
                                              " --headless --no-sandbox --disable-gpu "
                                              "--no-first-run --user-data-dir=" +
                                              profile + " --virtual-time-budget=4000 " + args +
                                              " '" + url + "'");
}

class Dashboard : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = test_support::missing_federation_prerequisite();
    if (!missing.empty()) GTEST_SKIP() << missing;
    dir_ = test_support::scratch_dir("dashboard");
    state_dir_ = dir_ + "/state";
  }

  std::unique_ptr<Process> start_coordinator(const std::vector<std::string>& extra) {
    return test_support::start_loopback_coordinator(dir_, state_dir_, extra);
  }
  std::unique_ptr<Process> start_client(int k, const std::string& port) {
    return test_support::start_loopback_client(dir_, k, port);
  }

  std::string dir_;
  std::string state_dir_;
};

std::unique_ptr<httplib::Client> client_for(int port) {
  auto client = std::make_unique<httplib::Client>("127.0.0.1", port);
  client->set_connection_timeout(5, 0);
  client->set_read_timeout(10, 0);
  return client;
}

// GET `path` as JSON; null when the request fails.
nlohmann::json get_json(httplib::Client& client, const std::string& path) {
  httplib::Result result = client.Get(path.c_str());
  if (!result || result->status != 200) return nullptr;
  return nlohmann::json::parse(result->body, nullptr, /*allow_exceptions=*/false);
}

TEST_F(Dashboard, ServesTheRunLiveAndMatchesMetricsJsonl) {
  test_support::write_file(dir_ + "/run.json", run_config(/*min_clients=*/3).dump(2));
  std::unique_ptr<Process> coordinator = start_coordinator({"--http", "127.0.0.1:0"});
  const std::string port = test_support::wait_for_file(state_dir_ + "/port", 60s);
  ASSERT_FALSE(port.empty()) << coordinator->log();
  const std::string http_port = test_support::wait_for_file(state_dir_ + "/http_port", 10s);
  ASSERT_FALSE(http_port.empty()) << coordinator->log();
  EXPECT_NE(coordinator->log().find("dashboard: http://127.0.0.1:" + http_port + "/"),
            std::string::npos)
      << coordinator->log();
  std::unique_ptr<httplib::Client> http = client_for(std::stoi(http_port));

  // Two of the three clients: the run waits in round 1 for the third.
  std::vector<std::unique_ptr<Process>> clients;
  clients.push_back(start_client(0, port));
  clients.push_back(start_client(1, port));
  nlohmann::json status;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until) {
    status = get_json(*http, "/api/status");
    if (status.is_object() && status["clients"]["connected"] == 2) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(status.is_object()) << coordinator->log();
  ASSERT_EQ(status["clients"]["connected"], 2) << status.dump(2);
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["strategy"], "fedavg");
  EXPECT_EQ(status["rounds"], kRounds);
  EXPECT_EQ(status["round"], 1);
  EXPECT_EQ(status["phase"], "idle");
  EXPECT_EQ(status["clients"]["waiting"], true);
  EXPECT_EQ(status["clients"]["min_available"], 3);
  EXPECT_EQ(status["rounds_completed"], 0);
  EXPECT_EQ(status["run_id"].get<std::string>().size(), 16u) << status.dump(2);
  EXPECT_EQ(get_json(*http, "/api/metrics"), nlohmann::json::array());
  {
    httplib::Result metrics = http->Get("/metrics");
    ASSERT_TRUE(metrics);
    EXPECT_EQ(metrics->status, 200);
    EXPECT_EQ(metrics->get_header_value("Content-Type"),
              "text/plain; version=0.0.4; charset=utf-8");
    Result<test_support::PromText> parsed = test_support::parse_prometheus_text(metrics->body);
    ASSERT_TRUE(parsed.ok()) << parsed.status().to_string() << "\n" << metrics->body;
    EXPECT_EQ(parsed->value("fedtail_clients_connected"), 2.0);
    EXPECT_EQ(parsed->value("fedtail_rounds_completed_total"), 0.0);
    EXPECT_EQ(parsed->value("fedtail_rounds_planned"), kRounds);
  }
  // Read-only, and only for loopback Host names.
  for (const char* path : {"/", "/api/status", "/metrics"}) {
    httplib::Result post = http->Post(path, "x", "text/plain");
    ASSERT_TRUE(post) << path;
    EXPECT_EQ(post->status, 405) << path;
    EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD") << path;
  }
  {
    httplib::Result head = http->Head("/api/status");
    ASSERT_TRUE(head);
    EXPECT_EQ(head->status, 200);
    EXPECT_TRUE(head->body.empty());
    httplib::Result rebound = http->Get("/api/status", {{"Host", "attacker.example:80"}});
    ASSERT_TRUE(rebound);
    EXPECT_EQ(rebound->status, 403);
    httplib::Result page = http->Get("/");
    ASSERT_TRUE(page);
    EXPECT_EQ(page->status, 200);
    EXPECT_NE(page->body.find("<title>fedtail dashboard</title>"), std::string::npos);
    // Nothing is loaded from elsewhere.
    EXPECT_EQ(page->body.find("https://"), std::string::npos);
    EXPECT_EQ(page->body.find("src="), std::string::npos);
    EXPECT_EQ(page->body.find("href="), std::string::npos);
    EXPECT_EQ(http->Get("/nothing-here")->status, 404);
  }

  // The page, rendered by a real browser while the run waits.
  const std::string chromium = find_chromium();
  const std::string url = "http://127.0.0.1:" + http_port + "/";
  if (!chromium.empty()) {
    const test_support::CliRun dom =
        run_chromium(chromium, dir_ + "/chromium-profile", "--dump-dom", url);
    EXPECT_EQ(dom.exit_code, 0) << dom.err;
    EXPECT_NE(dom.out.find("<span id=\"round\">1/" + std::to_string(kRounds) + "</span>"),
              std::string::npos)
        << dom.out;
    EXPECT_NE(dom.out.find("<b id=\"strategy\">fedavg</b>"), std::string::npos) << dom.out;
    EXPECT_NE(dom.out.find("id=\"clients-connected\">2<"), std::string::npos) << dom.out;
    EXPECT_NE(dom.out.find("id=\"clients-min\">3<"), std::string::npos) << dom.out;
    EXPECT_NE(dom.out.find("class=\"badge running\">running<"), std::string::npos) << dom.out;
    EXPECT_NE(dom.out.find("waiting for clients"), std::string::npos) << dom.out;
  } else {
    std::printf("chromium is not installed: the page is not rendered\n");
  }

  // The third client: the run goes on. Poll while it runs, keeping the last answers.
  clients.push_back(start_client(2, port));
  std::string last_prometheus;
  nlohmann::json last_lines;
  std::vector<std::string> states;
  bool screenshot_taken = false;
  const std::string screenshot = dir_ + "/dashboard.png";
  const auto run_until = std::chrono::steady_clock::now() + 120s;
  while (coordinator->running() && std::chrono::steady_clock::now() < run_until) {
    nlohmann::json s = get_json(*http, "/api/status");
    if (s.is_object()) {
      if (states.empty() || states.back() != s["state"]) states.push_back(s["state"]);
      if (s["phase"] == "fit" || s["phase"] == "evaluate") {
        EXPECT_EQ(s["clients"]["connected"], 3) << s.dump(2);
        EXPECT_EQ(s["selected"], 3) << s.dump(2);
        EXPECT_LE(s["received"].get<int>(), 3) << s.dump(2);
      }
      if (!chromium.empty() && !screenshot_taken && s["rounds_completed"].get<int>() >= 1) {
        const test_support::CliRun shot = run_chromium(
            chromium, dir_ + "/chromium-profile",
            "--window-size=1280,1000 --hide-scrollbars --screenshot=" + screenshot, url);
        EXPECT_EQ(shot.exit_code, 0) << shot.err;
        screenshot_taken = true;
      }
    }
    httplib::Result prometheus = http->Get("/metrics");
    if (prometheus && prometheus->status == 200) last_prometheus = prometheus->body;
    nlohmann::json lines = get_json(*http, "/api/metrics");
    if (lines.is_array()) last_lines = lines;
    std::this_thread::sleep_for(250ms);
  }
  ASSERT_EQ(coordinator->wait(30s), 0) << coordinator->log();
  for (auto& client : clients) EXPECT_EQ(client->wait(60s), 0) << client->log();
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.front(), "running");

  // What the dashboard last said agrees with metrics.jsonl.
  const std::vector<nlohmann::json> file =
      test_support::metrics_lines(state_dir_ + "/metrics.jsonl");
  ASSERT_EQ(file.size(), static_cast<size_t>(kRounds));
  Result<test_support::PromText> parsed = test_support::parse_prometheus_text(last_prometheus);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string() << "\n" << last_prometheus;
  const double completed = parsed->value("fedtail_rounds_completed_total").value_or(-1);
  ASSERT_GE(completed, 1) << last_prometheus;
  ASSERT_LE(completed, kRounds);
  const size_t k = static_cast<size_t>(completed);
  double down = 0, up = 0, seconds = 0;
  for (size_t i = 0; i < k; ++i) {
    down += file[i]["bytes"]["down"].get<double>();
    up += file[i]["bytes"]["up"].get<double>();
    seconds += file[i]["seconds"].get<double>();
  }
  EXPECT_GT(down, 0);
  EXPECT_EQ(parsed->value("fedtail_bytes_down_total"), down) << last_prometheus;
  EXPECT_EQ(parsed->value("fedtail_bytes_up_total"), up) << last_prometheus;
  EXPECT_EQ(parsed->value("fedtail_round_duration_seconds_count"), completed);
  EXPECT_EQ(parsed->value("fedtail_round_duration_seconds_bucket", {{"le", "+Inf"}}), completed);
  EXPECT_NEAR(parsed->value("fedtail_round_duration_seconds_sum").value_or(-1), seconds, 1e-9);
  EXPECT_EQ(parsed->value("fedtail_refusals_total", {{"kind", "late"}}), 0.0) << last_prometheus;
  const std::string run_id = file[0]["run_id"];
  const auto* info = parsed->family("fedtail_run_info");
  ASSERT_NE(info, nullptr);
  ASSERT_EQ(info->samples.size(), 1u);
  EXPECT_EQ(info->samples[0].labels.at("run_id"), run_id);
  EXPECT_EQ(info->samples[0].labels.at("strategy"), "fedavg");
  if (k >= static_cast<size_t>(kRounds / 2)) {  // the server evaluated at round kRounds / 2
    const auto* evaluated = &file[kRounds / 2 - 1];
    for (size_t i = kRounds / 2; i < k; ++i) {
      if (file[i].contains("server_eval")) evaluated = &file[i];
    }
    EXPECT_EQ(parsed->value("fedtail_accuracy", {{"group", "all"}}),
              (*evaluated)["server_eval"]["generic"]["overall"].get<double>());
  }
  // /api/metrics: the lines of metrics.jsonl so far, as written.
  ASSERT_TRUE(last_lines.is_array());
  ASSERT_GE(last_lines.size(), 1u);
  for (size_t i = 0; i < last_lines.size(); ++i) EXPECT_EQ(last_lines[i], file[i]) << i;

  if (screenshot_taken) {
    const std::string png = test_support::read_file(screenshot);
    ASSERT_GE(png.size(), 8u) << screenshot;
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    std::printf("dashboard screenshot: %s\n", screenshot.c_str());
  }
}

TEST_F(Dashboard, TokenIsRequiredWhenGiven) {
  // No client joins: the run waits, and the dashboard answers meanwhile.
  test_support::write_file(dir_ + "/run.json", run_config(/*min_clients=*/2).dump(2));
  test_support::write_file(dir_ + "/token", std::string(kToken) + "\n");
  std::unique_ptr<Process> coordinator =
      start_coordinator({"--http", "127.0.0.1:0", "--http-token-file", dir_ + "/token"});
  const std::string http_port = test_support::wait_for_file(state_dir_ + "/http_port", 60s);
  ASSERT_FALSE(http_port.empty()) << coordinator->log();
  std::unique_ptr<httplib::Client> http = client_for(std::stoi(http_port));
  const httplib::Headers bearer = {{"Authorization", std::string("Bearer ") + kToken}};
  const httplib::Headers wrong = {
      {"Authorization", std::string("Bearer ") + std::string(kToken).replace(0, 1, "x")}};
  for (const char* path : {"/", "/api/status", "/api/metrics", "/metrics"}) {
    httplib::Result none = http->Get(path);
    ASSERT_TRUE(none) << path;
    EXPECT_EQ(none->status, 401) << path;
    EXPECT_EQ(none->get_header_value("WWW-Authenticate"), "Bearer realm=\"fedtail\"");
    EXPECT_EQ(http->Get(path, wrong)->status, 401) << path;
    EXPECT_EQ(http->Get(path, bearer)->status, 200) << path;
  }
  // The page (only) also takes the token in its URL.
  EXPECT_EQ(http->Get((std::string("/?token=") + kToken).c_str())->status, 200);
  EXPECT_EQ(http->Get((std::string("/api/status?token=") + kToken).c_str())->status, 401);
  EXPECT_EQ(http->Get("/?token=wrong")->status, 401);
  // The run starts once the data is loaded (the dashboard already answers before: "idle").
  nlohmann::json status;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until) {
    status = nlohmann::json::parse(http->Get("/api/status", bearer)->body, nullptr, false);
    if (status.is_object() && status["state"] == "running") break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["strategy"], "fedavg");
  // Still read-only.
  EXPECT_EQ(http->Post("/api/status", bearer, "x", "text/plain")->status, 405);
  // SIGTERM: 128 + 15, as without the dashboard.
  EXPECT_EQ(coordinator->stop(30s), 143) << coordinator->log();
}

TEST_F(Dashboard, NonLoopbackAddressWithoutTokenIsRefusedAtStartup) {
  test_support::write_file(dir_ + "/run.json", run_config(/*min_clients=*/2).dump());
  const test_support::CliRun r = test_support::run_cli(
      test_support::binary_path("fedtail-coordinator"),
      "--config " + dir_ + "/run.json --state-dir " + state_dir_ + " --http 0.0.0.0:0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--http 0.0.0.0:0: not a loopback address"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--http-token-file"), std::string::npos) << r.err;
  // Refused before anything else: no state directory was made.
  EXPECT_FALSE(fs::exists(state_dir_ + "/port"));

  const test_support::CliRun bad = test_support::run_cli(
      test_support::binary_path("fedtail-coordinator"),
      "--config " + dir_ + "/run.json --state-dir " + state_dir_ + " --http 8080");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--http: expected HOST:PORT"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace fedtail
