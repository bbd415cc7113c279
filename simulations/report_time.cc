#include "simulations/report_time.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>
#include <utility>

namespace fedtail::simulation {
namespace {

// The fractions of the best mean final accuracy that the default targets take, in percent.
constexpr int kDefaultTargetPercents[] = {50, 75, 90};

std::optional<double> number_at(const nlohmann::json& object, const char* key) {
  if (!object.is_object() || !object.contains(key) || !object[key].is_number()) return std::nullopt;
  return object[key].get<double>();
}

std::optional<double> sim_time_of(const nlohmann::json& line) {
  return number_at(line, "sim_time_s");
}

// server_eval.generic.overall of an evaluated line.
std::optional<double> generic_overall_of(const nlohmann::json& line) {
  if (!line.is_object() || !line.contains("server_eval")) return std::nullopt;
  const nlohmann::json& server = line["server_eval"];
  if (!server.is_object() || !server.contains("generic")) return std::nullopt;
  return number_at(server["generic"], "overall");
}

// The object at `key`, or an empty object.
const nlohmann::json& object_at(const nlohmann::json& object, const char* key) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  if (!object.is_object() || !object.contains(key) || !object[key].is_object()) return kEmpty;
  return object[key];
}

// {"mean", "std", "n"} over the numbers at `key` of `objects`.
nlohmann::json stat_of(const std::vector<const nlohmann::json*>& objects, const char* key) {
  std::vector<double> values;
  for (const nlohmann::json* object : objects) {
    if (std::optional<double> v = number_at(*object, key)) values.push_back(*v);
  }
  return mean_std(values);
}

// "12.3" or "12.3 ± 0.4" of a {mean, std, n} in `unit`; "-" without a mean.
std::string time_cell(const nlohmann::json& stat, const TimeUnit& unit) {
  if (!stat.is_object() || !stat["mean"].is_number()) return "-";
  char text[64];
  if (stat["std"].is_number()) {
    std::snprintf(text, sizeof(text), "%.1f ± %.1f", stat["mean"].get<double>() / unit.seconds,
                  stat["std"].get<double>() / unit.seconds);
  } else {
    std::snprintf(text, sizeof(text), "%.1f", stat["mean"].get<double>() / unit.seconds);
  }
  return text;
}

std::string number_cell(const nlohmann::json& stat, const char* format) {
  if (!stat.is_object() || !stat["mean"].is_number()) return "-";
  char text[64];
  std::snprintf(text, sizeof(text), format, stat["mean"].get<double>());
  return text;
}

std::string percent_text(double fraction) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.4g%%", fraction * 100);
  return text;
}

// The time-to-accuracy cell of one target: the mean (± std) when each of the `runs` runs with a
// generic accuracy reached it, else "not reached (k/n)"; "-" when no run has one.
std::string target_cell(const nlohmann::json& stat, int runs, const TimeUnit& unit) {
  if (runs == 0) return "-";
  const int reached = stat.is_object() ? stat.value("n", 0) : 0;
  if (reached == runs) return time_cell(stat, unit);
  return "not reached (" + std::to_string(reached) + "/" + std::to_string(runs) + ")";
}

}  // namespace

bool has_simulated_time(const std::vector<RunResult>& runs) {
  for (const RunResult& run : runs) {
    for (const nlohmann::json& line : run.lines) {
      if (sim_time_of(line)) return true;
    }
  }
  return false;
}

AccuracyTargets accuracy_targets(const nlohmann::json& config, const nlohmann::json& generic_rows) {
  AccuracyTargets out;
  const nlohmann::json& simulation = object_at(config, "simulation");
  if (simulation.contains("target_accuracy") && !simulation["target_accuracy"].is_null()) {
    out.from_config = true;
    const nlohmann::json& given = simulation["target_accuracy"];
    if (given.is_array()) {
      for (const nlohmann::json& value : given) {
        if (value.is_number() && value.get<double>() > 0 && value.get<double>() < 1) {
          out.values.push_back(value.get<double>());
        }
      }
    }
  } else {
    bool found = false;
    for (const nlohmann::json& row : generic_rows) {
      if (!row.is_object() || row.value("model", std::string()) != "generic") continue;
      const std::optional<double> mean = number_at(object_at(row, "overall"), "mean");
      if (mean && (!found || *mean > out.reference_accuracy)) {
        found = true;
        out.reference_accuracy = *mean;
        out.reference_label = row.value("label", std::string());
      }
    }
    if (found) {
      for (int percent : kDefaultTargetPercents) {
        // reference (a fraction) × percent is the target in percent; the epsilon keeps 0.58 × 50
        // (28.999999999999996 in binary) at 29.
        const double whole = std::floor(out.reference_accuracy * percent + 1e-9);
        if (whole >= 1 && whole < 100) out.values.push_back(whole / 100);
      }
    }
  }
  std::sort(out.values.begin(), out.values.end());
  out.values.erase(std::unique(out.values.begin(), out.values.end()), out.values.end());
  return out;
}

std::string target_key(double target) { return nlohmann::json(target).dump(); }

nlohmann::json run_time_view(const RunResult& run, const std::vector<double>& targets) {
  nlohmann::json out = {{"sim_time_s", nullptr}};
  std::vector<nlohmann::json> reached(targets.size());  // null until reached
  bool evaluated = false;  // some line with a simulated time has a generic accuracy
  int steps = 0;
  double updates = 0, staleness_sum = 0, staleness_weight = 0, refused_stale = 0;
  nlohmann::json staleness_max;
  for (const nlohmann::json& line : run.lines) {
    const std::optional<double> t = sim_time_of(line);
    if (t) out["sim_time_s"] = *t;
    const std::optional<double> accuracy = generic_overall_of(line);
    if (t && accuracy) {
      evaluated = true;
      for (size_t i = 0; i < targets.size(); ++i) {
        if (reached[i].is_null() && *accuracy >= targets[i]) reached[i] = *t;
      }
    }
    if (!line.is_object() || !line.contains("version")) continue;
    ++steps;
    const nlohmann::json& fit = object_at(line, "fit");
    const std::optional<double> step_updates = number_at(fit, "updates");
    if (step_updates) updates += *step_updates;
    const nlohmann::json& staleness = fit.contains("staleness")
                                          ? object_at(fit, "staleness")
                                          : object_at(object_at(fit, "metrics"), "staleness");
    if (std::optional<double> mean = number_at(staleness, "mean")) {
      const double weight = step_updates && *step_updates > 0 ? *step_updates : 1;
      staleness_sum += *mean * weight;
      staleness_weight += weight;
    }
    if (std::optional<double> max = number_at(staleness, "max")) {
      if (staleness_max.is_null() || *max > staleness_max.get<double>()) staleness_max = *max;
    }
    if (std::optional<double> refused = number_at(fit, "refused_stale")) refused_stale += *refused;
  }
  nlohmann::json times = nlohmann::json::object();
  for (size_t i = 0; i < targets.size(); ++i) times[target_key(targets[i])] = reached[i];
  out["time_to_accuracy"] = evaluated ? std::move(times) : nlohmann::json();
  if (steps > 0) {
    out["async"] = {
        {"steps", steps},
        {"updates", updates},
        {"staleness_mean", staleness_weight > 0 ? nlohmann::json(staleness_sum / staleness_weight)
                                                : nlohmann::json()},
        {"staleness_max", staleness_max},
        {"refused_stale", refused_stale}};
  }
  return out;
}

nlohmann::json time_table(const nlohmann::json& runs, const std::vector<std::string>& labels,
                          const std::vector<double>& targets) {
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& label : labels) {
    std::vector<const nlohmann::json*> of_label, times, asyncs;
    std::string strategy;
    for (const nlohmann::json& run : runs) {
      if (run.value("label", std::string()) != label) continue;
      strategy = run.value("strategy", std::string());
      of_label.push_back(&run);
      if (run.contains("time_to_accuracy") && run["time_to_accuracy"].is_object()) {
        times.push_back(&run["time_to_accuracy"]);
      }
      if (run.contains("async") && run["async"].is_object()) asyncs.push_back(&run["async"]);
    }
    nlohmann::json row = {{"label", label},
                          {"strategy", strategy},
                          {"runs", of_label.size()},
                          {"evaluated_runs", times.size()},
                          {"sim_time_s", stat_of(of_label, "sim_time_s")},
                          {"rounds_completed", stat_of(of_label, "rounds_completed")}};
    nlohmann::json per_target = nlohmann::json::object();
    for (double target : targets) {
      const std::string key = target_key(target);
      per_target[key] = stat_of(times, key.c_str());
    }
    row["time_to_accuracy"] = std::move(per_target);
    if (!asyncs.empty()) {
      nlohmann::json async = nlohmann::json::object();
      for (const char* key :
           {"steps", "updates", "staleness_mean", "staleness_max", "refused_stale"}) {
        async[key] = stat_of(asyncs, key);
      }
      row["async"] = std::move(async);
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

TimeUnit time_unit_for(double max_seconds) {
  if (max_seconds < 120) return {"s", 1};
  if (max_seconds < 7200) return {"min", 60};
  return {"h", 3600};
}

std::string time_markdown(const nlohmann::json& report) {
  if (!report.is_object() || !report.contains("time_targets")) return "";
  const nlohmann::json& info = report["time_targets"];
  const nlohmann::json& rows =
      object_at(report, "table").value("time_to_accuracy", nlohmann::json::array());
  std::vector<double> targets;
  for (const nlohmann::json& value : info.value("values", nlohmann::json::array())) {
    if (value.is_number()) targets.push_back(value.get<double>());
  }
  double longest = 0;
  for (const nlohmann::json& row : rows) {
    if (std::optional<double> mean = number_at(object_at(row, "sim_time_s"), "mean")) {
      longest = std::max(longest, *mean);
    }
  }
  const TimeUnit unit = time_unit_for(longest);

  std::ostringstream md;
  md << "\n## Accuracy vs simulated time\n\n"
     << "Simulated time: each run's own clock, from its simulated devices (config \"devices\": "
        "compute slowdown, bandwidth, latency, availability), not this machine's wall time.\n\n"
     << "![generic accuracy vs simulated time](accuracy_vs_time.png)\n\n"
     << "accuracy_vs_time.png (drawn when gnuplot is installed; data in "
        "curves/accuracy_vs_time-*.dat): generic accuracy (all classes) per strategy; at each "
        "simulated time, each seed's latest evaluated accuracy, averaged over the seeds from when "
        "all had been evaluated to when the first was last evaluated.\n\n"
     << "### Time to accuracy\n\n"
     << "Simulated time (" << unit.name
     << ") until the generic accuracy (all classes) first reached each target, mean ± std over "
        "seeds; \"not reached (k/n)\": only k of the strategy's n seeds reached it. Final: each "
        "run's simulated time at its end. Rounds / steps: the rounds done (server steps for an "
        "asynchronous strategy). Targets: ";
  if (info.value("from", std::string()) == "config") {
    md << "simulation.target_accuracy";
  } else if (info.contains("reference") && info["reference"].is_object()) {
    const nlohmann::json& reference = info["reference"];
    md << "50%, 75% and 90% of the best strategy's mean final generic accuracy ("
       << reference.value("label", std::string()) << ", "
       << percent_text(reference.value("generic_accuracy", 0.0))
       << "), each rounded down to a whole percent (set simulation.target_accuracy to choose)";
  } else {
    md << "none (no strategy reported a final generic accuracy; set simulation.target_accuracy)";
  }
  md << ".\n\n| strategy |";
  for (double target : targets) md << " " << percent_text(target) << " |";
  md << " final | rounds / steps |\n|---|";
  for (size_t i = 0; i < targets.size(); ++i) md << "---|";
  md << "---|---|\n";
  for (const nlohmann::json& row : rows) {
    const int runs = row.value("evaluated_runs", 0);
    md << "| " << row.value("label", std::string());
    const nlohmann::json& per_target = object_at(row, "time_to_accuracy");
    for (double target : targets) {
      const std::string key = target_key(target);
      md << " | "
         << target_cell(per_target.contains(key) ? per_target[key] : nlohmann::json(), runs, unit);
    }
    md << " | " << time_cell(object_at(row, "sim_time_s"), unit) << " | "
       << number_cell(object_at(row, "rounds_completed"), "%.0f") << " |\n";
  }

  bool any_async = false;
  for (const nlohmann::json& row : rows) any_async = any_async || row.contains("async");
  if (any_async) {
    md << "\n### Asynchronous server steps\n\n"
          "Mean over seeds. Staleness: the model versions applied between a task's hand-out and "
          "its update's arrival (its mean weighted by the updates of each step); refused: updates "
          "staler than max_staleness.\n\n"
          "| strategy | steps | updates applied | mean staleness | max staleness | refused as "
          "stale |\n|---|---|---|---|---|---|\n";
    for (const nlohmann::json& row : rows) {
      if (!row.contains("async")) continue;
      const nlohmann::json& async = row["async"];
      md << "| " << row.value("label", std::string()) << " | "
         << number_cell(object_at(async, "steps"), "%.0f") << " | "
         << number_cell(object_at(async, "updates"), "%.0f") << " | "
         << number_cell(object_at(async, "staleness_mean"), "%.2f") << " | "
         << number_cell(object_at(async, "staleness_max"), "%.0f") << " | "
         << number_cell(object_at(async, "refused_stale"), "%.0f") << " |\n";
    }
  }
  return md.str();
}

std::vector<TimeSeries> accuracy_time_series(const std::vector<RunResult>& runs) {
  std::vector<std::string> labels;
  for (const RunResult& r : runs) {
    if (std::find(labels.begin(), labels.end(), r.label) == labels.end()) labels.push_back(r.label);
  }
  std::vector<TimeSeries> out;
  for (const std::string& label : labels) {
    // Per evaluated run: its seed and its (time, accuracy %) points in time order.
    std::vector<std::pair<uint64_t, std::vector<std::pair<double, double>>>> evaluated;
    for (const RunResult& r : runs) {
      if (r.label != label) continue;
      std::vector<std::pair<double, double>> points;
      for (const nlohmann::json& line : r.lines) {
        const std::optional<double> t = sim_time_of(line);
        const std::optional<double> accuracy = generic_overall_of(line);
        if (t && accuracy) points.emplace_back(*t, *accuracy * 100);
      }
      std::stable_sort(points.begin(), points.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      if (!points.empty()) evaluated.emplace_back(r.seed, std::move(points));
    }
    if (evaluated.empty()) continue;

    double from = evaluated.front().second.front().first;
    double to = evaluated.front().second.back().first;
    for (const auto& [seed, points] : evaluated) {
      from = std::max(from, points.front().first);
      to = std::min(to, points.back().first);
    }
    if (evaluated.size() > 1 && from > to) {
      // The seeds' evaluated windows do not overlap: a mean would extend some past their end.
      for (const auto& [seed, points] : evaluated) {
        TimeSeries series{label + " seed " + std::to_string(seed), {}};
        for (const auto& [t, accuracy] : points) series.points.push_back({t, accuracy, 0});
        out.push_back(std::move(series));
      }
      continue;
    }
    std::vector<double> times;
    for (const auto& [seed, points] : evaluated) {
      for (const auto& point : points) {
        if (point.first >= from && point.first <= to) times.push_back(point.first);
      }
    }
    std::sort(times.begin(), times.end());
    times.erase(std::unique(times.begin(), times.end()), times.end());
    TimeSeries series{label, {}};
    for (double t : times) {
      std::vector<double> values;
      for (const auto& [seed, points] : evaluated) {
        // The latest evaluation at or before t (one exists: t >= from).
        auto after = std::upper_bound(points.begin(), points.end(), t,
                                      [](double time, const auto& p) { return time < p.first; });
        values.push_back(std::prev(after)->second);
      }
      const nlohmann::json stat = mean_std(values);
      series.points.push_back({t, stat["mean"].get<double>(),
                               stat["std"].is_number() ? stat["std"].get<double>() : 0.0});
    }
    out.push_back(std::move(series));
  }
  return out;
}

}  // namespace fedtail::simulation
