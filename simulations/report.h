// The report of a simulation: summary.json (every run and the comparison table, mean ± std over
// seeds), summary.md (the tables) and PNG curves drawn with gnuplot, from the runs' own
// summary.json and metrics.jsonl files.
//
// Which models a table shows comes from what the strategies report, not from their names: every
// AccuracyReport under a metrics line's "server_eval" (e.g. "generic"; FedLoGe's "universal",
// "generic_unrealigned", "generic") is a generic row, and every {"mean", "weighted"} object under
// "evaluate.metrics" whose key starts with "personalized" is a personalised row. Values come from
// the last evaluated round of each run ("final"); beside them, each run's best round (the highest
// overall / mean over its evaluated rounds) and the mean over its last 10 rounds, as published
// tables report one or the other. Free functions; thread-safe.
#ifndef FEDTAIL_SIMULATIONS_REPORT_H_
#define FEDTAIL_SIMULATIONS_REPORT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace fedtail::simulation {

// One finished (or failed) run.
struct RunResult {
  std::string label;     // the strategy entry's label
  std::string strategy;  // its registered name
  uint64_t seed = 0;
  std::string run_dir;                // relative to the output directory
  std::string status = "completed";   // or "failed: <why>"
  nlohmann::json summary;             // the run's summary.json (null when it has none)
  std::vector<nlohmann::json> lines;  // its metrics.jsonl
  nlohmann::json worker_failures = nlohmann::json::array();  // workers lost during the run
};

// Context printed with the tables.
struct ReportInfo {
  std::string config_path;
  nlohmann::json config;  // the simulation config (data/model/local sections are described)
  double wall_seconds = 0;
  int workers = 0;
  std::vector<std::string> overrides;  // the --set PATH=VALUE applied to the config, in order
  // Launcher "slurm": {"job_id", "nodes", "coordinator_host", "transport", "gpus_per_worker",
  // "cpus_per_worker"}; null for a local simulation.
  nlohmann::json slurm;
};

// summary.json of the whole simulation: {"config", "overrides" (only when there are: the --set
// texts, in order), "slurm" (only for a Slurm simulation: ReportInfo::slurm), "wall_seconds",
// "workers", "setting",
// "validation_per_class" (config.data's; > 0: accuracies are on a validation set), "seeds",
// "strategies", "runs": [per run: label, strategy, seed, run_dir, status, rounds_completed,
// wall_seconds, final (the contract's keys, docs/architecture.md), models {generic, personalized}
// (at the last evaluated round), models_best (per model key: the row of the round with the highest
// "overall" / "mean", plus "round"), models_last10 (per model key: each column's mean over the
// evaluated rounds after last evaluated round − 10, plus "rounds": how many),
// bytes_per_round {down, up}, seconds_per_round {total, fit_s, fit_compute_s, fit_upload_s,
// aggregate_s, evaluate_s, evaluate_compute_s, evaluate_upload_s, server_eval_s, other_s} (means
// over rounds of the metrics lines' "timing"), worker_failures], "table": {"generic": [rows],
// "personalized": [rows], "generic_best", "personalized_best" (with a "round" column),
// "generic_last10", "personalized_last10" (with a "rounds" column), "cost": [rows, with
// seconds_per_round: {key: {mean, std, n}}]}}. Each
// table row holds label, model and {mean, std, n} per column (std null for one seed). With a single
// run, its strategy, rounds_completed, wall_seconds and final are also at the top level.
// When some metrics line has "sim_time_s" (simulated devices; report_time.h), also: per run
// "sim_time_s", "time_to_accuracy" and, for an asynchronous run, "async" (run_time_view);
// "table"."time_to_accuracy" (time_table's rows); and "time_targets": {"values" (the targets,
// ascending), "from" ("config": simulation.target_accuracy, or "default"), "reference" (default
// rule only, when a strategy reported a final generic accuracy: {"label", "generic_accuracy"})}.
nlohmann::json make_report(const ReportInfo& info, const std::vector<RunResult>& runs);

// summary.md: the tables of make_report's "table", in percent, mean ± std over seeds; with
// simulated time, the section "Accuracy vs simulated time" (report_time.h's time_markdown).
std::string report_markdown(const nlohmann::json& report);

// {"mean", "std", "n"} of `values`, the cell of every table: std is the sample standard deviation,
// null for fewer than 2 values; mean is null for none.
nlohmann::json mean_std(const std::vector<double>& values);

// metrics.jsonl of the simulation: every run's lines, each with "label" and "seed" added.
std::string combined_metrics(const std::vector<RunResult>& runs);

// Draws accuracy-vs-round curves (mean over seeds per strategy) into `out_dir`: accuracy.png
// (generic accuracy) and, when reported, personalized.png; with simulated time (some line has
// "sim_time_s"), accuracy_vs_time.png (generic accuracy against simulated time: the lines of
// report_time.h's accuracy_time_series). Data files under out_dir/curves/. Returns the PNG paths
// written. kNotFound when gnuplot is not installed (nothing is written); kIOError when a file
// cannot be written; kInternal when gnuplot fails (its message included).
Result<std::vector<std::string>> draw_curves(const std::vector<RunResult>& runs,
                                             const std::string& out_dir);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_REPORT_H_
