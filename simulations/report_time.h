// The simulated-time view of a simulation report (report.h). When a run config has a "devices"
// section (coordinator/device_model.h), every metrics line of the run carries "sim_time_s": the
// simulated seconds since the run began at the end of that round (or server step, for an
// asynchronous strategy). From those lines the report adds, per run, when the generic accuracy
// (server_eval.generic.overall) first reached each target accuracy, and draws accuracy against
// simulated time. Nothing here applies to a simulation without simulated devices: no line has
// "sim_time_s", and the report has no time view.
//
// Target accuracies come from config.simulation.target_accuracy (fractions in (0, 1), checked by
// make_plan), else they are 50%, 75% and 90% of the best strategy's mean final generic accuracy,
// each rounded down to a whole percent.
//
// Free functions over values; thread-safe.
#ifndef FEDTAIL_SIMULATIONS_REPORT_TIME_H_
#define FEDTAIL_SIMULATIONS_REPORT_TIME_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "simulations/report.h"

namespace fedtail::simulation {

// Whether any metrics line of `runs` has a numeric "sim_time_s".
bool has_simulated_time(const std::vector<RunResult>& runs);

// The target accuracies of the time-to-accuracy table and where they come from.
struct AccuracyTargets {
  std::vector<double> values;     // fractions in (0, 1), ascending, distinct; may be empty
  bool from_config = false;       // config.simulation.target_accuracy; else the default rule
  std::string reference_label;    // default rule: the label with the best mean final accuracy
  double reference_accuracy = 0;  // default rule: that mean (a fraction)
};

// config.simulation.target_accuracy when the config has it (entries that are not numbers in
// (0, 1) are left out: make_plan refuses them first); otherwise the default rule over
// `generic_rows` (make_report's table "generic": the rows whose model is "generic"). No row with a
// final generic accuracy, or targets that round down to 0%, give no (or fewer) targets.
AccuracyTargets accuracy_targets(const nlohmann::json& config, const nlohmann::json& generic_rows);

// A target's key in summary.json: its shortest decimal form ("0.45", "0.725").
std::string target_key(double target);

// The run's time keys for summary.json: "sim_time_s" (the simulated seconds of the last line that
// has one; null when none has), "time_to_accuracy" ({target_key: the "sim_time_s" of the first
// line whose generic overall accuracy is >= the target, or null when none is}; null itself when no
// line with a simulated time has a generic accuracy: a strategy without a global model) and, for an
// asynchronous run (lines with "version"), "async": {"steps" (lines with a version), "updates"
// (Σ fit.updates), "staleness_mean" (the steps' fit.staleness.mean weighted by their updates; null
// when no line reports it), "staleness_max", "refused_stale" (Σ fit.refused_stale)}.
nlohmann::json run_time_view(const RunResult& run, const std::vector<double>& targets);

// The comparison rows, one per label in `labels` order, from the report's runs (each with the keys
// of run_time_view and "rounds_completed"): {"label", "strategy", "runs" (how many runs the label
// has, failed ones included), "evaluated_runs" (those whose time_to_accuracy is not null),
// "sim_time_s" and "rounds_completed" ({mean, std, n} over the runs that have them),
// "time_to_accuracy": {target_key: {mean, std, n} over the runs that reached it (n of
// "evaluated_runs"; compare means only when n == evaluated_runs)}, and "async" ({mean, std, n} per
// key of run_time_view's "async") when some run of the label has one}.
nlohmann::json time_table(const nlohmann::json& runs, const std::vector<std::string>& labels,
                          const std::vector<double>& targets);

// summary.md's section "Accuracy vs simulated time" of a make_report result: a link to
// accuracy_vs_time.png, the time-to-accuracy table (mean ± std over seeds; "not reached (k/n)"
// when only k of the label's n evaluated runs reached a target; "-" for a label without generic
// accuracy) and, with asynchronous runs, their steps,
// updates and staleness. Empty when the report has no "time_targets" (no simulated time).
std::string time_markdown(const nlohmann::json& report);

// A unit to show simulated seconds in, for values up to `max_seconds`: seconds under 2 minutes,
// minutes under 2 hours, hours above.
struct TimeUnit {
  const char* name;  // "s", "min" or "h"
  double seconds;    // seconds per unit
};
TimeUnit time_unit_for(double max_seconds);

// One line of accuracy_vs_time.png.
struct TimeSeries {
  std::string title;  // the label, or "<label> seed <s>" (see accuracy_time_series)
  struct Point {
    double seconds;       // simulated time
    double accuracy_pct;  // generic overall accuracy in %: the mean over the line's seeds
    double std_pct;       // over the seeds (0 for one)
  };
  std::vector<Point> points;  // ascending time
};

// The lines of accuracy_vs_time.png, labels in first-seen order. Each seed's accuracy at a time t
// is its latest evaluated generic overall accuracy at or before t (a step function). A label with
// one evaluated run gives that run's evaluations. With several, the line is the mean over its runs
// at every time one of them was evaluated, from when all had been evaluated to when the first of
// them was last evaluated (no run's accuracy is extended past its last evaluation); when those
// windows do not overlap, the label gives one line per seed instead. Runs and labels without an
// evaluated line with "sim_time_s" give no line.
std::vector<TimeSeries> accuracy_time_series(const std::vector<RunResult>& runs);

}  // namespace fedtail::simulation

#endif  // FEDTAIL_SIMULATIONS_REPORT_TIME_H_
