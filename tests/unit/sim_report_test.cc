// The simulation report: tables from what strategies report, mean ± std over seeds, summary.md,
// metrics.jsonl tagging, and the summary keys of the binaries' contract.
#include <gtest/gtest.h>

#include <cmath>

#include "simulations/report.h"

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

}  // namespace
}  // namespace fedtail::simulation
