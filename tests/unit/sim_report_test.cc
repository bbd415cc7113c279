// The simulation report: tables from what strategies report, mean ± std over seeds, summary.md,
// metrics.jsonl tagging, and the summary keys of the binaries' contract.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "simulations/report.h"
#include "simulations/report_time.h"

namespace fedtail::simulation {
namespace {

nlohmann::json group(double overall, double many, double medium, double few) {
  return {{"overall", overall}, {"many", many}, {"medium", medium}, {"few", few}};
}

// A run whose last evaluated round reports `accuracy` for a "generic" model (and, with fedloge's
// keys, "universal"), and personalised accuracy `personal`.
RunResult run(const std::string& label, uint64_t seed, double accuracy, double personal,
              bool fedloge = false) {
  RunResult r;
  r.label = label;
  r.strategy = fedloge ? "fedloge" : "fedavg";
  r.seed = seed;
  r.run_dir = "runs/" + label + "/seed-" + std::to_string(seed);
  nlohmann::json server = {
      {"generic", group(accuracy, accuracy + 0.1, accuracy - 0.1, accuracy - 0.2)},
      {"generic_by_count_rule", group(0, 0, 0, 0)},
      {"sse_c", {{"sparsity", 0.6}}}};
  if (fedloge) server["universal"] = group(accuracy - 0.05, 0.9, 0.5, 0.1);
  r.lines = {
      {{"round", 1},
       {"bytes", {{"down", 1000}, {"up", 500}}},
       {"seconds", 4.0 * seed},
       {"timing", {{"fit_s", 3.0}, {"fit_compute_s", 5.0}, {"aggregate_s", 0.5}}}},
      {{"round", 2},
       {"bytes", {{"down", 3000}, {"up", 1500}}},
       {"seconds", 8.0 * seed},
       {"timing",
        {{"fit_s", 3.0}, {"fit_compute_s", 7.0}, {"evaluate_s", 2.0}, {"server_eval_s", 1.0}}},
       {"server_eval", server},
       {"evaluate",
        {{"metrics",
          {{"personalized", {{"mean", personal}, {"weighted", personal + 0.01}}},
           {"loss", 0.3}}}}}}};
  r.summary = {{"strategy", r.strategy},
               {"rounds_completed", 2},
               {"wall_seconds", 10.0 * seed},
               {"final", {{"generic_accuracy", accuracy}}}};
  return r;
}

TEST(SimReport, TablesAverageOverSeeds) {
  std::vector<RunResult> runs = {run("fedavg", 1, 0.50, 0.70), run("fedavg", 2, 0.60, 0.80),
                                 run("fedloge", 1, 0.55, 0.85, true)};
  ReportInfo info;
  info.config_path = "x.json";
  info.config = {{"data", {{"dataset", "fashion-mnist"}, {"clients", 4}}}};
  info.workers = 2;
  const nlohmann::json report = make_report(info, runs);

  EXPECT_EQ(report["strategies"], nlohmann::json({"fedavg", "fedloge"}));
  EXPECT_EQ(report["seeds"], nlohmann::json({1, 2}));
  ASSERT_EQ(report["runs"].size(), 3u);
  EXPECT_EQ(report["runs"][0]["final"]["generic_accuracy"], 0.5);
  EXPECT_EQ(report["runs"][0]["evaluated_round"], 2);
  EXPECT_DOUBLE_EQ(report["runs"][0]["bytes_per_round"]["down"].get<double>(), 2000);
  EXPECT_FALSE(report.contains("strategy"));  // several runs: no single-run keys

  const nlohmann::json& generic = report["table"]["generic"];
  // fedavg: one model; fedloge: generic and universal (the count-rule duplicate and non-report
  // objects are not models).
  ASSERT_EQ(generic.size(), 3u);
  EXPECT_EQ(generic[0]["label"], "fedavg");
  EXPECT_EQ(generic[0]["model"], "generic");
  EXPECT_DOUBLE_EQ(generic[0]["overall"]["mean"].get<double>(), 0.55);
  EXPECT_NEAR(generic[0]["overall"]["std"].get<double>(), std::sqrt(0.005), 1e-12);
  EXPECT_EQ(generic[0]["overall"]["n"], 2);
  EXPECT_EQ(generic[1]["label"], "fedloge");
  EXPECT_EQ(generic[2]["model"], "universal");
  EXPECT_TRUE(generic[2]["overall"]["std"].is_null());  // one seed
  EXPECT_DOUBLE_EQ(generic[2]["few"]["mean"].get<double>(), 0.1);

  const nlohmann::json& personal = report["table"]["personalized"];
  ASSERT_EQ(personal.size(), 2u);
  EXPECT_DOUBLE_EQ(personal[0]["mean"]["mean"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(personal[1]["weighted"]["mean"].get<double>(), 0.86);

  const nlohmann::json& cost = report["table"]["cost"];
  ASSERT_EQ(cost.size(), 2u);
  EXPECT_DOUBLE_EQ(cost[0]["wall_seconds"]["mean"].get<double>(), 15);

  const std::string md = report_markdown(report);
  EXPECT_NE(
      md.find("| fedavg | generic | 55.00 ± 7.07 | 65.00 ± 7.07 | 45.00 ± 7.07 | 35.00 ± 7.07 |"),
      std::string::npos)
      << md;
  EXPECT_NE(md.find("| fedloge | universal | 50.00 | 90.00 | 50.00 | 10.00 |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("| fedavg | personalized | 75.00 ± 7.07 | 76.00 ± 7.07 |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("not masked"), std::string::npos);
  EXPECT_EQ(md.find("## Failures"), std::string::npos);
}

// A run evaluated every 5 rounds up to round 20 with generic accuracy `overall[i]` and personalised
// mean `personal[i]` at round 5·(i+1).
RunResult evaluated_every_5(uint64_t seed, const std::vector<double>& overall,
                            const std::vector<double>& personal) {
  RunResult r;
  r.label = "fedavg";
  r.strategy = "fedavg";
  r.seed = seed;
  for (size_t i = 0; i < overall.size(); ++i) {
    for (int k = 1; k < 5; ++k) r.lines.push_back({{"round", 5 * i + k}});
    r.lines.push_back(
        {{"round", 5 * (i + 1)},
         {"server_eval", {{"generic", group(overall[i], overall[i], overall[i], 0)}}},
         {"evaluate",
          {{"metrics", {{"personalized", {{"mean", personal[i]}, {"weighted", personal[i]}}}}}}}});
  }
  return r;
}

TEST(SimReport, FinalBestRoundAndLastTenMeanSideBySide) {
  // Seed 1 peaks at round 10, seed 2 at round 20; the last 10 rounds hold rounds 15 and 20.
  const std::vector<RunResult> runs = {
      evaluated_every_5(1, {0.30, 0.50, 0.40, 0.45}, {0.6, 0.7, 0.8, 0.75}),
      evaluated_every_5(2, {0.20, 0.30, 0.40, 0.60}, {0.5, 0.5, 0.5, 0.5})};
  ReportInfo info;
  const nlohmann::json report = make_report(info, runs);
  const nlohmann::json& run = report["runs"][0];
  EXPECT_DOUBLE_EQ(run["models"]["generic"]["generic"]["overall"].get<double>(), 0.45);
  EXPECT_DOUBLE_EQ(run["models_best"]["generic"]["generic"]["overall"].get<double>(), 0.50);
  EXPECT_EQ(run["models_best"]["generic"]["generic"]["round"], 10);
  EXPECT_DOUBLE_EQ(run["models_best"]["personalized"]["personalized"]["mean"].get<double>(), 0.8);
  EXPECT_EQ(run["models_best"]["personalized"]["personalized"]["round"], 15);
  EXPECT_DOUBLE_EQ(run["models_last10"]["generic"]["generic"]["overall"].get<double>(), 0.425);
  EXPECT_EQ(run["models_last10"]["generic"]["generic"]["rounds"], 2);
  // A tie keeps the earliest round: seed 2's personalised accuracy is flat.
  EXPECT_EQ(report["runs"][1]["models_best"]["personalized"]["personalized"]["round"], 5);

  const nlohmann::json& best = report["table"]["generic_best"][0];
  EXPECT_DOUBLE_EQ(best["overall"]["mean"].get<double>(), 0.55);  // (0.50 + 0.60) / 2
  EXPECT_DOUBLE_EQ(best["round"]["mean"].get<double>(), 15);      // (10 + 20) / 2
  const nlohmann::json& last = report["table"]["generic_last10"][0];
  EXPECT_DOUBLE_EQ(last["overall"]["mean"].get<double>(), (0.425 + 0.50) / 2);
  const nlohmann::json& personal_last = report["table"]["personalized_last10"][0];
  EXPECT_DOUBLE_EQ(personal_last["mean"]["mean"].get<double>(), (0.775 + 0.5) / 2);

  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("## Final, best round and last-10 mean"), std::string::npos) << md;
  EXPECT_NE(md.find("| fedavg | generic (all classes) | 52.50 ± 10.61 | 55.00 ± 7.07 (15) | "
                    "46.25 ± 5.30 (2) |"),
            std::string::npos)
      << md;
}

TEST(SimReport, SecondsPerRoundSplitTheRoundsTimingAcrossRoundsAndSeeds) {
  std::vector<RunResult> runs = {run("fedavg", 1, 0.50, 0.70), run("fedavg", 2, 0.60, 0.80)};
  const nlohmann::json report = make_report(ReportInfo{}, runs);
  // Seed 1: rounds of 4 s and 8 s; a key missing from a round counts 0 there.
  const nlohmann::json& t = report["runs"][0]["seconds_per_round"];
  EXPECT_DOUBLE_EQ(t["total"].get<double>(), 6.0);
  EXPECT_DOUBLE_EQ(t["fit_s"].get<double>(), 3.0);
  EXPECT_DOUBLE_EQ(t["fit_compute_s"].get<double>(), 6.0);
  EXPECT_DOUBLE_EQ(t["aggregate_s"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(t["evaluate_s"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(t["server_eval_s"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(t["other_s"].get<double>(), 6.0 - 3.0 - 1.0 - 0.5);
  EXPECT_DOUBLE_EQ(t["fit_upload_s"].get<double>(), 0.0);
  // The cost row averages the runs: totals 6 and 12 s.
  const nlohmann::json& cost = report["table"]["cost"][0]["seconds_per_round"];
  EXPECT_DOUBLE_EQ(cost["total"]["mean"].get<double>(), 9.0);
  EXPECT_EQ(cost["total"]["n"].get<int>(), 2);
  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("## Time per round"), std::string::npos);
  EXPECT_NE(md.find("| fedavg | 9.0 | 3.0 | 6.0 |"), std::string::npos) << md;
}

TEST(SimReport, ModelWithoutGroupColumnsHasEmptyGroupCells) {
  // A generic report with only "overall": the best and last-10 rows have no group columns.
  RunResult r;
  r.label = "fedavg";
  r.lines = {{{"round", 1}, {"server_eval", {{"generic", {{"overall", 0.5}}}}}}};
  const nlohmann::json report = make_report({}, {r});
  const nlohmann::json& last = report["table"]["generic_last10"][0];
  EXPECT_DOUBLE_EQ(last["overall"]["mean"].get<double>(), 0.5);
  EXPECT_TRUE(last["many"]["mean"].is_null());
  EXPECT_EQ(last["many"]["n"], 0);
  EXPECT_TRUE(report["table"]["generic_best"][0]["few"]["mean"].is_null());
}

TEST(SimReport, SingleRunHasTheDesignKeysAtTopLevel) {
  const nlohmann::json report = make_report({}, {run("fedavg", 1, 0.5, 0.7)});
  EXPECT_EQ(report["strategy"], "fedavg");
  EXPECT_EQ(report["rounds_completed"], 2);
  EXPECT_EQ(report["final"]["generic_accuracy"], 0.5);
  EXPECT_TRUE(report.contains("wall_seconds"));
  EXPECT_EQ(report["runs"].size(), 1u);
}

TEST(SimReport, FailuresAreListed) {
  RunResult failed = run("fedavg", 1, 0.5, 0.7);
  failed.status = "failed: every worker ended";
  failed.worker_failures.push_back(
      {{"worker", 1}, {"first_client", 2}, {"last_client", 3}, {"how", "killed by signal 9"}});
  const std::string md = report_markdown(make_report({}, {failed}));
  EXPECT_NE(md.find("## Failures"), std::string::npos);
  EXPECT_NE(md.find("failed: every worker ended"), std::string::npos);
  EXPECT_NE(md.find("worker 1 (clients 2-3) killed by signal 9"), std::string::npos) << md;
}

TEST(SimReport, CombinedMetricsAreTaggedWithLabelAndSeed) {
  const std::string text = combined_metrics({run("a", 1, 0.5, 0.7), run("b", 3, 0.5, 0.7)});
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    lines.push_back(nlohmann::json::parse(text.substr(start, end - start)));
    start = end + 1;
  }
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0]["label"], "a");
  EXPECT_EQ(lines[0]["seed"], 1);
  EXPECT_EQ(lines[3]["label"], "b");
  EXPECT_EQ(lines[3]["seed"], 3);
  EXPECT_EQ(lines[3]["round"], 2);
}

// A run with simulated devices: one metrics line per (sim_time_s, generic accuracy or none) pair,
// rounds 1, 2, ...; the accuracy, when given, as server_eval.generic.overall.
RunResult timed_run(const std::string& label, uint64_t seed,
                    const std::vector<std::pair<double, std::optional<double>>>& lines) {
  RunResult r;
  r.label = label;
  r.strategy = label;
  r.seed = seed;
  r.run_dir = "runs/" + label + "/seed-" + std::to_string(seed);
  std::optional<double> last;
  for (size_t i = 0; i < lines.size(); ++i) {
    nlohmann::json line = {{"round", i + 1}, {"sim_time_s", lines[i].first}};
    if (lines[i].second) {
      line["server_eval"] = {{"generic", group(*lines[i].second, 0, 0, 0)}};
      last = lines[i].second;
    }
    r.lines.push_back(line);
  }
  r.summary = {{"strategy", label},
               {"rounds_completed", lines.size()},
               {"final", {{"generic_accuracy", last ? nlohmann::json(*last) : nlohmann::json()}}}};
  return r;
}

// FedAvg, seed 1: evaluated at 60 s (30%), 180 s (45%) and 240 s (62%); seed 2 at 120 s (42%),
// 360 s (50%) and 480 s (58%); each with a round between its first two evaluations.
std::vector<RunResult> fedavg_two_seeds() {
  return {timed_run("fedavg", 1, {{60, 0.30}, {120, std::nullopt}, {180, 0.45}, {240, 0.62}}),
          timed_run("fedavg", 2, {{120, 0.42}, {240, std::nullopt}, {360, 0.50}, {480, 0.58}})};
}

// FedBuff, one seed, three server steps (lines with "step" and "version", staleness in "fit").
RunResult fedbuff_run() {
  RunResult r = timed_run("fedbuff", 1, {{30, 0.41}, {45, std::nullopt}, {90, 0.65}});
  const int updates[] = {3, 3, 4};
  const double staleness_mean[] = {0, 1, 2};
  const int staleness_max[] = {0, 2, 3};
  const int refused[] = {0, 1, 0};
  for (size_t i = 0; i < r.lines.size(); ++i) {
    r.lines[i]["step"] = i + 1;
    r.lines[i]["version"] = i + 1;
    r.lines[i]["fit"] = {{"updates", updates[i]},
                         {"staleness", {{"mean", staleness_mean[i]}, {"max", staleness_max[i]}}},
                         {"refused_stale", refused[i]}};
  }
  return r;
}

TEST(SimReportTime, TimeToConfiguredTargetsPerRunAndMeanOverSeeds) {
  std::vector<RunResult> runs = fedavg_two_seeds();
  runs.push_back(fedbuff_run());
  ReportInfo info;
  info.config = {{"simulation", {{"target_accuracy", {0.8, 0.4, 0.6}}}}};
  const nlohmann::json report = make_report(info, runs);

  EXPECT_EQ(report["time_targets"],
            nlohmann::json({{"values", {0.4, 0.6, 0.8}}, {"from", "config"}}));
  // Per run: the first evaluated line at or above each target (the round without an evaluation
  // counts for nothing), the last line's simulated time.
  const nlohmann::json& seed1 = report["runs"][0];
  EXPECT_EQ(seed1["time_to_accuracy"],
            nlohmann::json({{"0.4", 180.0}, {"0.6", 240.0}, {"0.8", nullptr}}));
  EXPECT_EQ(seed1["sim_time_s"], 240.0);
  EXPECT_FALSE(seed1.contains("async"));  // a synchronous run
  EXPECT_EQ(report["runs"][1]["time_to_accuracy"],
            nlohmann::json({{"0.4", 120.0}, {"0.6", nullptr}, {"0.8", nullptr}}));
  EXPECT_EQ(report["runs"][1]["sim_time_s"], 480.0);
  const nlohmann::json& buff = report["runs"][2];
  EXPECT_EQ(buff["time_to_accuracy"],
            nlohmann::json({{"0.4", 30.0}, {"0.6", 90.0}, {"0.8", nullptr}}));
  EXPECT_EQ(buff["sim_time_s"], 90.0);
  // Staleness mean weighted by updates: (0·3 + 1·3 + 2·4) / 10.
  EXPECT_EQ(buff["async"]["steps"], 3);
  EXPECT_EQ(buff["async"]["updates"], 10.0);
  EXPECT_DOUBLE_EQ(buff["async"]["staleness_mean"].get<double>(), 1.1);
  EXPECT_EQ(buff["async"]["staleness_max"], 3.0);
  EXPECT_EQ(buff["async"]["refused_stale"], 1.0);
  // The existing keys are still there.
  EXPECT_EQ(seed1["rounds_completed"], 4);
  EXPECT_DOUBLE_EQ(seed1["models"]["generic"]["generic"]["overall"].get<double>(), 0.62);

  const nlohmann::json& rows = report["table"]["time_to_accuracy"];
  ASSERT_EQ(rows.size(), 2u);
  const nlohmann::json& fedavg = rows[0];
  EXPECT_EQ(fedavg["label"], "fedavg");
  EXPECT_EQ(fedavg["runs"], 2);
  EXPECT_DOUBLE_EQ(fedavg["time_to_accuracy"]["0.4"]["mean"].get<double>(), 150);  // (180+120)/2
  EXPECT_NEAR(fedavg["time_to_accuracy"]["0.4"]["std"].get<double>(), std::sqrt(1800.0), 1e-9);
  EXPECT_EQ(fedavg["time_to_accuracy"]["0.4"]["n"], 2);
  EXPECT_EQ(fedavg["time_to_accuracy"]["0.6"]["n"], 1);  // seed 2 never reached 60%
  EXPECT_EQ(fedavg["time_to_accuracy"]["0.6"]["mean"], 240.0);
  EXPECT_EQ(fedavg["time_to_accuracy"]["0.8"]["n"], 0);
  EXPECT_TRUE(fedavg["time_to_accuracy"]["0.8"]["mean"].is_null());
  EXPECT_DOUBLE_EQ(fedavg["sim_time_s"]["mean"].get<double>(), 360);
  EXPECT_DOUBLE_EQ(fedavg["rounds_completed"]["mean"].get<double>(), 4);
  EXPECT_FALSE(fedavg.contains("async"));
  EXPECT_DOUBLE_EQ(rows[1]["async"]["staleness_mean"]["mean"].get<double>(), 1.1);

  // summary.md: minutes (the longest mean run is 6 min), one column per target.
  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("## Accuracy vs simulated time"), std::string::npos) << md;
  EXPECT_NE(md.find("![generic accuracy vs simulated time](accuracy_vs_time.png)"),
            std::string::npos);
  EXPECT_NE(md.find("Simulated time (min) until"), std::string::npos) << md;
  EXPECT_NE(md.find("Targets: simulation.target_accuracy."), std::string::npos) << md;
  EXPECT_NE(
      md.find(
          "| strategy | 40% | 60% | 80% | final | rounds / steps |\n|---|---|---|---|---|---|\n"),
      std::string::npos)
      << md;
  EXPECT_NE(
      md.find("| fedavg | 2.5 ± 0.7 | not reached (1/2) | not reached (0/2) | 6.0 ± 2.8 | 4 |"),
      std::string::npos)
      << md;
  EXPECT_NE(md.find("| fedbuff | 0.5 | 1.5 | not reached (0/1) | 1.5 | 3 |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("### Asynchronous server steps"), std::string::npos) << md;
  EXPECT_NE(md.find("| fedbuff | 3 | 10 | 1.10 | 3 | 1 |"), std::string::npos) << md;
  // The time view comes after the accuracy tables and before the cost.
  EXPECT_LT(md.find("## Final, best round"), md.find("## Accuracy vs simulated time"));
  EXPECT_LT(md.find("## Accuracy vs simulated time"), md.find("## Cost"));
}

TEST(SimReportTime, DefaultTargetsAreFractionsOfTheBestMeanFinalAccuracy) {
  // fedavg's final mean is (62 + 58) / 2 = 60%, fedbuff's 65%: targets 32.5, 48.75, 58.5 -> 32,
  // 48, 58%.
  std::vector<RunResult> runs = fedavg_two_seeds();
  runs.push_back(fedbuff_run());
  const nlohmann::json report = make_report(ReportInfo{}, runs);
  EXPECT_EQ(report["time_targets"]["values"], nlohmann::json({0.32, 0.48, 0.58}));
  EXPECT_EQ(report["time_targets"]["from"], "default");
  EXPECT_EQ(report["time_targets"]["reference"]["label"], "fedbuff");
  EXPECT_DOUBLE_EQ(report["time_targets"]["reference"]["generic_accuracy"].get<double>(), 0.65);
  // Seed 2 ends at exactly 58%: reaching a target counts equality.
  EXPECT_EQ(report["runs"][1]["time_to_accuracy"],
            nlohmann::json({{"0.32", 120.0}, {"0.48", 360.0}, {"0.58", 480.0}}));
  const nlohmann::json& fedavg = report["table"]["time_to_accuracy"][0];
  EXPECT_DOUBLE_EQ(fedavg["time_to_accuracy"]["0.48"]["mean"].get<double>(), 300);  // (240+360)/2
  EXPECT_DOUBLE_EQ(fedavg["time_to_accuracy"]["0.58"]["mean"].get<double>(), 360);  // (240+480)/2
  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("Targets: 50%, 75% and 90% of the best strategy's mean final generic accuracy "
                    "(fedbuff, 65%), each rounded down to a whole percent"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| strategy | 32% | 48% | 58% | final | rounds / steps |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("| fedavg | 2.5 ± 0.7 | 5.0 ± 1.4 | 6.0 ± 2.8 | 6.0 ± 2.8 | 4 |"),
            std::string::npos)
      << md;

  // Only "generic" rows count (FedLoGe's "universal" does not); 0.58 × 50 is 29 despite binary
  // rounding; targets that round down to 0% are left out.
  const nlohmann::json rows = {
      {{"label", "a"}, {"model", "generic"}, {"overall", {{"mean", 0.58}}}},
      {{"label", "b"}, {"model", "universal"}, {"overall", {{"mean", 0.9}}}}};
  AccuracyTargets targets = accuracy_targets(nlohmann::json::object(), rows);
  EXPECT_EQ(targets.values, (std::vector<double>{0.29, 0.43, 0.52}));
  EXPECT_FALSE(targets.from_config);
  EXPECT_EQ(targets.reference_label, "a");
  targets = accuracy_targets(
      {}, {{{"label", "a"}, {"model", "generic"}, {"overall", {{"mean", 0.015}}}}});
  EXPECT_EQ(targets.values, (std::vector<double>{0.01}));  // 0.75%, 1.125%, 1.35%
  EXPECT_TRUE(accuracy_targets({}, nlohmann::json::array()).values.empty());
}

TEST(SimReportTime, NoTargetsWithoutAFinalGenericAccuracy) {
  // Simulated time, but no evaluation: the table has the final times and no target column.
  const nlohmann::json report =
      make_report(ReportInfo{}, {timed_run("fedavg", 1, {{30, std::nullopt}, {60, std::nullopt}})});
  EXPECT_TRUE(report["time_targets"]["values"].empty());
  EXPECT_FALSE(report["time_targets"].contains("reference"));
  EXPECT_TRUE(report["runs"][0]["time_to_accuracy"].is_null());
  EXPECT_EQ(report["table"]["time_to_accuracy"][0]["evaluated_runs"], 0);
  const std::string md = report_markdown(report);
  EXPECT_NE(md.find("Targets: none (no strategy reported a final generic accuracy"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| strategy | final | rounds / steps |\n|---|---|---|\n| fedavg | 60.0 | 2 |"),
            std::string::npos)
      << md;  // seconds: the run is under 2 minutes

  // Beside a strategy with a global model, one without has "-", not "not reached".
  ReportInfo info;
  info.config = {{"simulation", {{"target_accuracy", {0.4}}}}};
  const std::string both = report_markdown(
      make_report(info, {timed_run("fedavg", 1, {{30, 0.5}, {60, 0.6}}),
                         timed_run("fedproto", 1, {{30, std::nullopt}, {90, std::nullopt}})}));
  EXPECT_NE(both.find("| fedavg | 30.0 | 60.0 | 2 |\n| fedproto | - | 90.0 | 2 |"),
            std::string::npos)
      << both;
}

TEST(SimReportTime, NoTimeViewWithoutSimulatedTime) {
  const nlohmann::json report =
      make_report(ReportInfo{}, {run("fedavg", 1, 0.5, 0.7), run("fedavg", 2, 0.6, 0.8)});
  EXPECT_FALSE(report.contains("time_targets"));
  EXPECT_FALSE(report["table"].contains("time_to_accuracy"));
  EXPECT_FALSE(report["runs"][0].contains("sim_time_s"));
  EXPECT_FALSE(report["runs"][0].contains("time_to_accuracy"));
  const std::string md = report_markdown(report);
  EXPECT_EQ(md.find("simulated time"), std::string::npos) << md;
  EXPECT_EQ(md.find("accuracy_vs_time"), std::string::npos) << md;
}

TEST(SimReportTime, TimeUnitsFollowTheRange) {
  EXPECT_STREQ(time_unit_for(119).name, "s");
  EXPECT_STREQ(time_unit_for(120).name, "min");
  EXPECT_STREQ(time_unit_for(7199).name, "min");
  EXPECT_STREQ(time_unit_for(7200).name, "h");
  EXPECT_EQ(time_unit_for(7200).seconds, 3600);
}

TEST(SimReportTime, CurvesAverageEachSeedsLatestAccuracyWhereAllHaveOne) {
  std::vector<RunResult> runs = fedavg_two_seeds();
  runs.push_back(fedbuff_run());
  const std::vector<TimeSeries> series = accuracy_time_series(runs);
  ASSERT_EQ(series.size(), 2u);
  // fedavg: from 120 s (seed 2's first evaluation) to 240 s (seed 1's last).
  EXPECT_EQ(series[0].title, "fedavg");
  ASSERT_EQ(series[0].points.size(), 3u);
  EXPECT_EQ(series[0].points[0].seconds, 120);
  EXPECT_NEAR(series[0].points[0].accuracy_pct, 36, 1e-9);  // seed 1 still at 30%, seed 2 at 42%
  EXPECT_NEAR(series[0].points[0].std_pct, std::sqrt(72.0), 1e-9);
  EXPECT_EQ(series[0].points[1].seconds, 180);
  EXPECT_NEAR(series[0].points[1].accuracy_pct, 43.5, 1e-9);
  EXPECT_EQ(series[0].points[2].seconds, 240);
  EXPECT_NEAR(series[0].points[2].accuracy_pct, 52, 1e-9);
  // One seed: its evaluations.
  EXPECT_EQ(series[1].title, "fedbuff");
  ASSERT_EQ(series[1].points.size(), 2u);
  EXPECT_EQ(series[1].points[1].seconds, 90);
  EXPECT_NEAR(series[1].points[1].accuracy_pct, 65, 1e-9);
  EXPECT_EQ(series[1].points[1].std_pct, 0);

  // Seeds whose evaluated windows do not overlap: one line each.
  const std::vector<TimeSeries> apart = accuracy_time_series(
      {timed_run("x", 1, {{10, 0.1}, {20, 0.2}}), timed_run("x", 2, {{30, 0.3}, {40, 0.4}})});
  ASSERT_EQ(apart.size(), 2u);
  EXPECT_EQ(apart[0].title, "x seed 1");
  EXPECT_EQ(apart[1].title, "x seed 2");
  EXPECT_EQ(apart[1].points.size(), 2u);
}

TEST(SimReportTime, DrawsAccuracyVsTimeWithGnuplot) {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::path(FEDTAIL_TEST_TMP) / ("sim_report_time_test." + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::vector<RunResult> runs = fedavg_two_seeds();
  runs.push_back(fedbuff_run());
  Result<std::vector<std::string>> written = draw_curves(runs, dir.string());
  if (!written.ok() && written.status().code() == StatusCode::kNotFound) {
    GTEST_SKIP() << written.status().message();
  }
  ASSERT_TRUE(written.ok()) << written.status().to_string();
  EXPECT_EQ(*written, (std::vector<std::string>{(dir / "accuracy.png").string(),
                                                (dir / "accuracy_vs_time.png").string()}));
  std::ifstream png(dir / "accuracy_vs_time.png", std::ios::binary);
  char magic[4] = {};
  png.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  std::ifstream data(dir / "curves" / "accuracy_vs_time-fedavg.dat");
  std::stringstream text;
  text << data.rdbuf();
  // In minutes (the longest line ends at 240 s): time, mean and std over the two seeds.
  EXPECT_EQ(text.str(),
            "# simulated_min mean std (generic accuracy %, over seeds)\n"
            "2 36 8.48528\n3 43.5 2.12132\n4 52 14.1421\n");

  // Without simulated time: no accuracy_vs_time.png.
  fs::remove_all(dir);
  written = draw_curves({run("fedavg", 1, 0.5, 0.7)}, dir.string());
  ASSERT_TRUE(written.ok()) << written.status().to_string();
  EXPECT_EQ(*written, (std::vector<std::string>{(dir / "accuracy.png").string(),
                                                (dir / "personalized.png").string()}));
  EXPECT_FALSE(fs::exists(dir / "accuracy_vs_time.png"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fedtail::simulation
