#include "simulations/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "common/base/subprocess.h"
#include "simulations/report_time.h"

namespace fedtail::simulation {
namespace {

namespace fs = std::filesystem;

const char* const kGroupColumns[] = {"overall", "many", "medium", "few"};
const char* const kPersonalColumns[] = {"mean", "weighted"};
// The same with the round the best value was reached in, and with how many evaluated rounds the
// last-10 mean averaged.
const char* const kBestGroupColumns[] = {"overall", "many", "medium", "few", "round"};
const char* const kBestPersonalColumns[] = {"mean", "weighted", "round"};
const char* const kLast10GroupColumns[] = {"overall", "many", "medium", "few", "rounds"};
const char* const kLast10PersonalColumns[] = {"mean", "weighted", "rounds"};

bool is_number(const nlohmann::json& j) { return j.is_number(); }

// The last metrics line with an evaluation, or null.
const nlohmann::json* last_evaluated(const std::vector<nlohmann::json>& lines) {
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (it->contains("server_eval") || it->contains("evaluate")) return &*it;
  }
  return nullptr;
}

// {"generic": {key: {overall, many, medium, few}}, "personalized": {key: {mean, weighted}}} of one
// metrics line.
nlohmann::json models_of(const nlohmann::json& line) {
  nlohmann::json generic = nlohmann::json::object();
  nlohmann::json personalized = nlohmann::json::object();
  if (line.contains("server_eval") && line["server_eval"].is_object()) {
    for (const auto& [key, value] : line["server_eval"].items()) {
      const bool count_rule =
          key.size() > 14 && key.compare(key.size() - 14, 14, "_by_count_rule") == 0;
      if (count_rule || !value.is_object() || !value.contains("overall")) continue;
      nlohmann::json row = nlohmann::json::object();
      for (const char* column : kGroupColumns) row[column] = value.value(column, nlohmann::json());
      generic[key] = row;
    }
  }
  if (line.contains("evaluate") && line["evaluate"].is_object()) {
    const nlohmann::json& metrics = line["evaluate"].value("metrics", nlohmann::json::object());
    if (metrics.is_object()) {
      for (const auto& [key, value] : metrics.items()) {
        if (key.rfind("personalized", 0) != 0 || !value.is_object() || !value.contains("mean")) {
          continue;
        }
        nlohmann::json row = nlohmann::json::object();
        for (const char* column : kPersonalColumns) {
          row[column] = value.value(column, nlohmann::json());
        }
        personalized[key] = row;
      }
    }
  }
  return {{"generic", generic}, {"personalized", personalized}};
}

// The primary column of a model row: what "best" maximises.
const char* primary_column(const std::string& kind) {
  return kind == "generic" ? "overall" : "mean";
}

// The model rows of every evaluated line, in round order, and the rounds.
struct Evaluations {
  std::vector<nlohmann::json> models;  // models_of(line)
  std::vector<int64_t> rounds;
};

Evaluations evaluations_of(const std::vector<nlohmann::json>& lines) {
  Evaluations out;
  for (const nlohmann::json& line : lines) {
    if (!line.contains("server_eval") && !line.contains("evaluate")) continue;
    out.models.push_back(models_of(line));
    out.rounds.push_back(line.value("round", int64_t{0}));
  }
  return out;
}

// Per kind and model key, the row of the evaluated round where the key's primary column is
// highest (the earliest such round), with "round" added: what published tables call the best round.
nlohmann::json best_models(const Evaluations& e) {
  nlohmann::json out = {{"generic", nlohmann::json::object()},
                        {"personalized", nlohmann::json::object()}};
  for (const char* kind : {"generic", "personalized"}) {
    const char* column = primary_column(kind);
    for (size_t i = 0; i < e.models.size(); ++i) {
      for (const auto& [key, row] : e.models[i][kind].items()) {
        if (!row[column].is_number()) continue;
        const nlohmann::json& best = out[kind].contains(key) ? out[kind][key] : nlohmann::json();
        if (best.is_null() || row[column].get<double>() > best[column].get<double>()) {
          nlohmann::json chosen = row;
          chosen["round"] = e.rounds[i];
          out[kind][key] = chosen;
        }
      }
    }
  }
  return out;
}

// Per kind, model key and column, the mean over the evaluated rounds among the run's last 10
// rounds (round > last evaluated round − 10), with "rounds": how many were averaged.
nlohmann::json last10_models(const Evaluations& e) {
  nlohmann::json out = {{"generic", nlohmann::json::object()},
                        {"personalized", nlohmann::json::object()}};
  if (e.rounds.empty()) return out;
  const int64_t from = e.rounds.back() - 10;
  for (const char* kind : {"generic", "personalized"}) {
    std::map<std::string, std::map<std::string, std::pair<double, int>>> sums;
    std::map<std::string, int> rounds;
    for (size_t i = 0; i < e.models.size(); ++i) {
      if (e.rounds[i] <= from) continue;
      for (const auto& [key, row] : e.models[i][kind].items()) {
        ++rounds[key];
        for (const auto& [column, value] : row.items()) {
          if (!value.is_number()) continue;
          sums[key][column].first += value.get<double>();
          sums[key][column].second += 1;
        }
      }
    }
    for (const auto& [key, columns] : sums) {
      nlohmann::json row = nlohmann::json::object();
      for (const auto& [column, sum] : columns) row[column] = sum.first / sum.second;
      row["rounds"] = rounds[key];
      out[kind][key] = row;
    }
  }
  return out;
}

// Mean payload bytes per round: {"down", "up"}.
nlohmann::json bytes_per_round(const std::vector<nlohmann::json>& lines) {
  double down = 0, up = 0;
  int n = 0;
  for (const nlohmann::json& line : lines) {
    if (!line.contains("bytes") || !line["bytes"].is_object()) continue;
    down += line["bytes"].value("down", 0.0);
    up += line["bytes"].value("up", 0.0);
    ++n;
  }
  if (n == 0) return {{"down", nullptr}, {"up", nullptr}};
  return {{"down", down / n}, {"up", up / n}};
}

// The engine's per-round "timing" keys (coordinator/round_engine.cc), in table order.
constexpr const char* kTimingKeys[] = {
    "fit_s",      "fit_compute_s",      "fit_upload_s",      "aggregate_s",
    "evaluate_s", "evaluate_compute_s", "evaluate_upload_s", "server_eval_s"};

// Mean seconds per round: {"total", <each timing key>, "other_s"}; a key a round lacks (no
// evaluation that round) counts as 0 there. "other_s" = total − fit − evaluate − server eval:
// waiting for clients, configuring, checkpoints. Null values when no round has a timing.
nlohmann::json seconds_per_round(const std::vector<nlohmann::json>& lines) {
  nlohmann::json out = nlohmann::json::object();
  double total = 0;
  std::map<std::string, double> sums;
  int n = 0;
  for (const nlohmann::json& line : lines) {
    if (!line.contains("timing") || !line["timing"].is_object()) continue;
    total += line.value("seconds", 0.0);
    for (const char* key : kTimingKeys) sums[key] += line["timing"].value(key, 0.0);
    ++n;
  }
  out["total"] = n > 0 ? nlohmann::json(total / n) : nlohmann::json();
  for (const char* key : kTimingKeys)
    out[key] = n > 0 ? nlohmann::json(sums[key] / n) : nlohmann::json();
  out["other_s"] =
      n > 0
          ? nlohmann::json((total - sums["fit_s"] - sums["evaluate_s"] - sums["server_eval_s"]) / n)
          : nlohmann::json();
  return out;
}

// Rows of one table kind ("generic" or "personalized") of the runs' `models` field ("models":
// final, "models_best", "models_last10"): per label, per model key, per column.
nlohmann::json table_rows(const nlohmann::json& runs, const std::vector<std::string>& labels,
                          const char* kind, const char* const* columns, size_t num_columns,
                          const char* models = "models") {
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& label : labels) {
    // Model keys in first-seen order.
    std::vector<std::string> keys;
    std::string strategy;
    for (const nlohmann::json& run : runs) {
      if (run["label"] != label) continue;
      strategy = run.value("strategy", "");
      for (const auto& [key, value] : run[models][kind].items()) {
        if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
      }
    }
    for (const std::string& key : keys) {
      nlohmann::json row = {{"label", label}, {"strategy", strategy}, {"model", key}};
      for (size_t c = 0; c < num_columns; ++c) {
        std::vector<double> values;
        for (const nlohmann::json& run : runs) {
          if (run["label"] != label || !run[models][kind].contains(key)) continue;
          // A column no evaluated round reported is absent from the best / last-10 rows.
          const nlohmann::json& model = run[models][kind][key];
          if (model.contains(columns[c]) && is_number(model[columns[c]])) {
            values.push_back(model[columns[c]].get<double>());
          }
        }
        row[columns[c]] = mean_std(values);
      }
      rows.push_back(row);
    }
  }
  return rows;
}

std::string cell_percent(const nlohmann::json& stat) {
  if (!stat.is_object() || !stat["mean"].is_number()) return "-";
  char text[64];
  if (stat["std"].is_number()) {
    std::snprintf(text, sizeof(text), "%.2f ± %.2f", stat["mean"].get<double>() * 100,
                  stat["std"].get<double>() * 100);
  } else {
    std::snprintf(text, sizeof(text), "%.2f", stat["mean"].get<double>() * 100);
  }
  return text;
}

std::string cell_number(const nlohmann::json& stat, double scale, const char* format) {
  if (!stat.is_object() || !stat["mean"].is_number()) return "-";
  char text[64];
  std::snprintf(text, sizeof(text), format, stat["mean"].get<double>() * scale);
  return text;
}

// A short description of the data and training setting from the config.
std::string describe_config(const nlohmann::json& config) {
  std::ostringstream out;
  if (!config.is_object()) return "";
  const nlohmann::json data = config.value("data", nlohmann::json::object());
  const nlohmann::json model = config.value("model", nlohmann::json::object());
  const nlohmann::json local = config.value("local", nlohmann::json::object());
  out << data.value("dataset", std::string("?"));
  if (data.contains("imbalance_factor")) out << ", imbalance factor " << data["imbalance_factor"];
  out << ", " << data.value("partition", std::string("dirichlet")) << " partition";
  if (data.contains("alpha")) out << " (α " << data["alpha"] << ")";
  if (data.value("validation_per_class", 0) > 0) {
    out << ", evaluated on a validation set of " << data["validation_per_class"]
        << " held-out training examples per class (not the test set)";
  }
  out << ", " << data.value("clients", 0) << " clients; model "
      << model.value("arch", std::string("cnn"));
  if (local.is_object() && !local.empty()) {
    out << "; local";
    for (const char* key : {"epochs", "batch_size", "lr", "momentum", "weight_decay"}) {
      if (local.contains(key)) out << " " << key << " " << local[key];
    }
  }
  return out.str();
}

// Runs gnuplot on `script`; its output goes to script + ".log". kInternal with that output when
// gnuplot fails.
Status run_gnuplot(const std::string& gnuplot, const std::string& script) {
  SubprocessOptions options;
  options.argv = {gnuplot, script};
  options.log_path = script + ".log";
  FEDTAIL_ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> process, Subprocess::spawn(options));
  if (process->wait() != 0) {
    std::ifstream log(options.log_path);
    std::stringstream text;
    text << log.rdbuf();
    return Status::Internal("gnuplot " + script + " failed (" + process->describe_exit() +
                            "): " + text.str());
  }
  return Status::OK();
}

// accuracy_vs_time.png from accuracy_time_series; no file when no line has a simulated time
// with a generic accuracy. Returns the PNG path written, or "" for none.
Result<std::string> draw_time_curve(const std::vector<RunResult>& runs, const std::string& out_dir,
                                    const std::string& gnuplot) {
  const std::vector<TimeSeries> series = accuracy_time_series(runs);
  double longest = 0;
  for (const TimeSeries& s : series) {
    for (const TimeSeries::Point& p : s.points) longest = std::max(longest, p.seconds);
  }
  if (series.empty()) return std::string();
  const TimeUnit unit = time_unit_for(longest);
  std::vector<std::pair<std::string, std::string>> files;  // title, data file
  for (const TimeSeries& s : series) {
    std::string stem = s.title;
    std::replace(stem.begin(), stem.end(), ' ', '-');
    const std::string data =
        (fs::path(out_dir) / "curves" / ("accuracy_vs_time-" + stem + ".dat")).string();
    std::ofstream out(data);
    out << "# simulated_" << unit.name << " mean std (generic accuracy %, over seeds)\n";
    for (const TimeSeries::Point& p : s.points) {
      out << p.seconds / unit.seconds << " " << p.accuracy_pct << " " << p.std_pct << "\n";
    }
    if (!out) return Status::IOError(data + ": cannot write");
    files.emplace_back(s.title, data);
  }
  const std::string png = (fs::path(out_dir) / "accuracy_vs_time.png").string();
  const std::string script = (fs::path(out_dir) / "curves" / "accuracy_vs_time.gp").string();
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 960,600 noenhanced\n"
       << "set output '" << png << "'\n"
       << "set title 'generic accuracy (%) vs simulated time (latest evaluation of each seed, "
          "mean over seeds)'\n"
       << "set xlabel 'simulated time (" << unit.name << ")'\nset ylabel 'generic accuracy (%)'\n"
       << "set key bottom right\nset grid\n"
       << "plot ";
    for (size_t i = 0; i < files.size(); ++i) {
      gp << (i ? ", \\\n     " : "") << "'" << files[i].second << "' using 1:2 with steps title '"
         << files[i].first << "'";
    }
    gp << "\n";
    if (!gp) return Status::IOError(script + ": cannot write");
  }
  FEDTAIL_RETURN_IF_ERROR(run_gnuplot(gnuplot, script));
  return png;
}

}  // namespace

nlohmann::json mean_std(const std::vector<double>& values) {
  if (values.empty()) return {{"mean", nullptr}, {"std", nullptr}, {"n", 0}};
  double sum = 0;
  for (double v : values) sum += v;
  const double mean = sum / values.size();
  nlohmann::json out = {{"mean", mean}, {"std", nullptr}, {"n", values.size()}};
  if (values.size() > 1) {
    double sq = 0;
    for (double v : values) sq += (v - mean) * (v - mean);
    out["std"] = std::sqrt(sq / (values.size() - 1));
  }
  return out;
}

nlohmann::json make_report(const ReportInfo& info, const std::vector<RunResult>& results) {
  nlohmann::json runs = nlohmann::json::array();
  std::vector<std::string> labels;
  std::vector<uint64_t> seeds;
  for (const RunResult& r : results) {
    if (std::find(labels.begin(), labels.end(), r.label) == labels.end()) labels.push_back(r.label);
    if (std::find(seeds.begin(), seeds.end(), r.seed) == seeds.end()) seeds.push_back(r.seed);
    const nlohmann::json* evaluated = last_evaluated(r.lines);
    nlohmann::json run = {{"label", r.label},        {"strategy", r.strategy},
                          {"seed", r.seed},          {"run_dir", r.run_dir},
                          {"status", r.status},      {"rounds_completed", nullptr},
                          {"wall_seconds", nullptr}, {"final", nullptr}};
    if (r.summary.is_object()) {
      for (const char* key : {"rounds_completed", "wall_seconds", "final", "run_id"}) {
        if (r.summary.contains(key)) run[key] = r.summary[key];
      }
    } else {
      run["rounds_completed"] = static_cast<int>(r.lines.size());
    }
    run["models"] = evaluated ? models_of(*evaluated)
                              : nlohmann::json{{"generic", nlohmann::json::object()},
                                               {"personalized", nlohmann::json::object()}};
    run["evaluated_round"] = evaluated ? evaluated->value("round", nlohmann::json()) : nullptr;
    const Evaluations all = evaluations_of(r.lines);
    run["models_best"] = best_models(all);
    run["models_last10"] = last10_models(all);
    run["bytes_per_round"] = bytes_per_round(r.lines);
    run["seconds_per_round"] = seconds_per_round(r.lines);
    run["worker_failures"] = r.worker_failures;
    runs.push_back(std::move(run));
  }

  // The time view needs the final generic table (its default targets), and adds keys to the runs.
  const nlohmann::json generic_rows = table_rows(runs, labels, "generic", kGroupColumns, 4);
  nlohmann::json time_rows, time_targets;
  if (has_simulated_time(results)) {
    const AccuracyTargets targets = accuracy_targets(info.config, generic_rows);
    for (size_t i = 0; i < results.size(); ++i) {
      runs[i].update(run_time_view(results[i], targets.values));
    }
    time_rows = time_table(runs, labels, targets.values);
    time_targets = {{"values", targets.values},
                    {"from", targets.from_config ? "config" : "default"}};
    if (!targets.from_config && !targets.reference_label.empty()) {
      time_targets["reference"] = {{"label", targets.reference_label},
                                   {"generic_accuracy", targets.reference_accuracy}};
    }
  }

  nlohmann::json cost = nlohmann::json::array();
  for (const std::string& label : labels) {
    std::vector<double> rounds, wall, down, up;
    for (const nlohmann::json& run : runs) {
      if (run["label"] != label) continue;
      if (run["rounds_completed"].is_number()) rounds.push_back(run["rounds_completed"]);
      if (run["wall_seconds"].is_number()) wall.push_back(run["wall_seconds"]);
      if (run["bytes_per_round"]["down"].is_number())
        down.push_back(run["bytes_per_round"]["down"]);
      if (run["bytes_per_round"]["up"].is_number()) up.push_back(run["bytes_per_round"]["up"]);
    }
    nlohmann::json per_round = nlohmann::json::object();
    const nlohmann::json timing_keys = seconds_per_round({});
    for (const auto& [key, unused] : timing_keys.items()) {
      std::vector<double> values;
      for (const nlohmann::json& run : runs) {
        if (run["label"] == label && run["seconds_per_round"][key].is_number()) {
          values.push_back(run["seconds_per_round"][key]);
        }
      }
      per_round[key] = mean_std(values);
    }
    cost.push_back({{"label", label},
                    {"rounds_completed", mean_std(rounds)},
                    {"wall_seconds", mean_std(wall)},
                    {"bytes_down_per_round", mean_std(down)},
                    {"bytes_up_per_round", mean_std(up)},
                    {"seconds_per_round", per_round}});
  }

  nlohmann::json report = {
      {"config", info.config_path},
      {"wall_seconds", info.wall_seconds},
      {"workers", info.workers},
      {"setting", describe_config(info.config)},
      {"validation_per_class",
       info.config.is_object()
           ? info.config.value("data", nlohmann::json::object()).value("validation_per_class", 0)
           : 0},
      {"mask_absent_classes",
       info.config.is_object() &&
           info.config.value("eval", nlohmann::json::object()).value("mask_absent_classes", false)},
      {"seeds", seeds},
      {"strategies", labels},
      {"runs", runs},
      {"table",
       {{"generic", generic_rows},
        {"personalized", table_rows(runs, labels, "personalized", kPersonalColumns, 2)},
        {"generic_best", table_rows(runs, labels, "generic", kBestGroupColumns, 5, "models_best")},
        {"personalized_best",
         table_rows(runs, labels, "personalized", kBestPersonalColumns, 3, "models_best")},
        {"generic_last10",
         table_rows(runs, labels, "generic", kLast10GroupColumns, 5, "models_last10")},
        {"personalized_last10",
         table_rows(runs, labels, "personalized", kLast10PersonalColumns, 3, "models_last10")},
        {"cost", cost}}}};
  if (!time_targets.is_null()) {
    report["time_targets"] = std::move(time_targets);
    report["table"]["time_to_accuracy"] = std::move(time_rows);
  }
  if (!info.overrides.empty()) report["overrides"] = info.overrides;
  if (info.slurm.is_object()) report["slurm"] = info.slurm;
  if (runs.size() == 1) {
    for (const char* key : {"rounds_completed", "final"}) report[key] = runs[0][key];
    report["strategy"] = runs[0]["strategy"];
  }
  return report;
}

std::string report_markdown(const nlohmann::json& report) {
  std::ostringstream md;
  const nlohmann::json& table = report["table"];
  const size_t n_seeds = report["seeds"].size();
  md << "# fedtail-sim: " << report.value("config", std::string()) << "\n\n";
  if (report.contains("overrides") && report["overrides"].is_array() &&
      !report["overrides"].empty()) {
    md << "Config overrides:";
    for (const nlohmann::json& text : report["overrides"]) {
      md << " `--set " << (text.is_string() ? text.get<std::string>() : text.dump()) << "`";
    }
    md << ".  \n";
  }
  md << report.value("setting", std::string()) << ".  \n";
  md << report["runs"].size() << " run(s): " << report["strategies"].size() << " strateg"
     << (report["strategies"].size() == 1 ? "y" : "ies") << " × " << n_seeds << " seed(s) "
     << report["seeds"].dump() << "; " << report.value("workers", 0) << " worker process(es); "
     << "wall time " << static_cast<long>(std::lround(report.value("wall_seconds", 0.0)))
     << " s.\n";
  if (report.contains("slurm") && report["slurm"].is_object()) {
    const nlohmann::json& slurm = report["slurm"];
    std::string nodes;
    for (const nlohmann::json& node : slurm.value("nodes", nlohmann::json::array())) {
      nodes += (nodes.empty() ? "" : ", ") + (node.is_string() ? node.get<std::string>() : "?");
    }
    md << "Slurm job " << slurm.value("job_id", std::string("?")) << " on " << nodes
       << ": each worker an srun step; coordinator on "
       << slurm.value("coordinator_host", std::string("?")) << " over "
       << slurm.value("transport", std::string("?")) << ".\n";
  }
  md << "Accuracies in %, " << (n_seeds > 1 ? "mean ± std over seeds" : "one seed")
     << ", at each run's last evaluated round.\n\n";

  const bool validation = report.value("validation_per_class", 0) > 0;
  md << "## Generic accuracy (balanced " << (validation ? "validation" : "test") << " set)\n\n"
     << "Many / Medium / Few: classes sorted by training count; Many holds the first 75% of the "
        "training samples, Medium the next 20%, Few the rest.\n\n"
        "| strategy | model | all | many | medium | few |\n|---|---|---|---|---|---|\n";
  for (const nlohmann::json& row : table["generic"]) {
    md << "| " << row["label"].get<std::string>() << " | " << row["model"].get<std::string>();
    for (const char* column : kGroupColumns) md << " | " << cell_percent(row[column]);
    md << " |\n";
  }
  if (table["generic"].empty()) md << "| (no strategy reported a global model) | | | | | |\n";

  md << "\n## Personalised accuracy (each client's model on its own test set)\n\n"
     << "Absent classes " << (report.value("mask_absent_classes", false) ? "masked" : "not masked")
     << " (eval.mask_absent_classes).\n\n"
        "| strategy | model | mean over clients | weighted by test examples |\n|---|---|---|---|\n";
  for (const nlohmann::json& row : table["personalized"]) {
    md << "| " << row["label"].get<std::string>() << " | " << row["model"].get<std::string>();
    for (const char* column : kPersonalColumns) md << " | " << cell_percent(row[column]);
    md << " |\n";
  }
  if (table["personalized"].empty()) md << "| (no federated evaluation) | | | |\n";

  // Final, best round and last-10 mean side by side: published tables give one of the latter two.
  md << "\n## Final, best round and last-10 mean\n\n"
     << "Final: the last evaluated round (the tables above). Best: each run's highest value over "
        "its "
        "evaluated rounds (the round in brackets, mean over seeds), then averaged over seeds, as "
        "published tables usually report. Last 10: the mean over the evaluated rounds among each "
        "run's last 10 rounds (how many in brackets).\n\n"
        "| strategy | model | final | best (round) | last 10 (rounds) |\n|---|---|---|---|---|\n";
  const auto side_by_side = [&](const char* kind, const char* column, const char* suffix) {
    const nlohmann::json& finals = table[kind];
    for (size_t i = 0; i < finals.size(); ++i) {
      const nlohmann::json& row = finals[i];
      const auto find = [&](const std::string& which) -> nlohmann::json {
        for (const nlohmann::json& r : table.value(std::string(kind) + which, nlohmann::json())) {
          if (r["label"] == row["label"] && r["model"] == row["model"]) return r;
        }
        return nlohmann::json();
      };
      const nlohmann::json best = find("_best");
      const nlohmann::json last = find("_last10");
      md << "| " << row["label"].get<std::string>() << " | " << row["model"].get<std::string>()
         << suffix << " | " << cell_percent(row[column]) << " | "
         << (best.is_object()
                 ? cell_percent(best[column]) + " (" + cell_number(best["round"], 1, "%.0f") + ")"
                 : std::string("-"))
         << " | "
         << (last.is_object()
                 ? cell_percent(last[column]) + " (" + cell_number(last["rounds"], 1, "%.0f") + ")"
                 : std::string("-"))
         << " |\n";
    }
  };
  side_by_side("generic", "overall", " (all classes)");
  side_by_side("personalized", "mean", " (mean over clients)");
  md << time_markdown(report);

  md << "\n## Cost\n\n| strategy | rounds | wall s per run | MB down per round | MB up per round "
        "|\n|---|---|---|---|---|\n";
  for (const nlohmann::json& row : table["cost"]) {
    md << "| " << row["label"].get<std::string>() << " | "
       << cell_number(row["rounds_completed"], 1, "%.0f") << " | "
       << cell_number(row["wall_seconds"], 1, "%.0f") << " | "
       << cell_number(row["bytes_down_per_round"], 1e-6, "%.2f") << " | "
       << cell_number(row["bytes_up_per_round"], 1e-6, "%.2f") << " |\n";
  }
  md << "\n## Time per round (s, mean over rounds)\n\n"
        "Phase walls on the coordinator's clock; Σ columns add up the clients' own times, which "
        "overlap when workers run in parallel. Other: waiting for clients, configuring, "
        "checkpoints.\n\n"
        "| strategy | round | training phase | Σ client training | Σ upload | aggregation | "
        "client eval phase | Σ client eval | server eval | other |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const nlohmann::json& row : table["cost"]) {
    const nlohmann::json& t = row["seconds_per_round"];
    md << "| " << row["label"].get<std::string>();
    for (const char* key : {"total", "fit_s", "fit_compute_s", "fit_upload_s", "aggregate_s",
                            "evaluate_s", "evaluate_compute_s", "server_eval_s", "other_s"}) {
      md << " | "
         << cell_number(t[key], 1,
                        std::string(key) == "aggregate_s" || std::string(key) == "fit_upload_s"
                            ? "%.3f"
                            : "%.1f");
    }
    md << " |\n";
  }
  bool failures = false;
  for (const nlohmann::json& run : report["runs"]) {
    if (run["status"] != "completed" || !run["worker_failures"].empty()) failures = true;
  }
  if (failures) {
    md << "\n## Failures\n\n";
    for (const nlohmann::json& run : report["runs"]) {
      if (run["status"] != "completed") {
        md << "- " << run["run_dir"].get<std::string>() << ": " << run["status"].get<std::string>()
           << "\n";
      }
      for (const nlohmann::json& w : run["worker_failures"]) {
        md << "- " << run["run_dir"].get<std::string>() << ": worker " << w.value("worker", 0)
           << " (clients " << w.value("first_client", 0) << "-" << w.value("last_client", 0) << ") "
           << w.value("how", std::string()) << "; its clients counted as failures\n";
      }
    }
  }
  return md.str();
}

std::string combined_metrics(const std::vector<RunResult>& runs) {
  std::string out;
  for (const RunResult& r : runs) {
    for (const nlohmann::json& line : r.lines) {
      nlohmann::json tagged = line;
      tagged["label"] = r.label;
      tagged["seed"] = r.seed;
      out += tagged.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      out += '\n';
    }
  }
  return out;
}

Result<std::vector<std::string>> draw_curves(const std::vector<RunResult>& runs,
                                             const std::string& out_dir) {
  const std::string gnuplot = "/usr/bin/gnuplot";
  if (!fs::exists(gnuplot)) {
    return Status::NotFound(
        "gnuplot is not installed (apt-get install gnuplot-nox): no PNG curves");
  }
  // label -> round -> values over seeds, for each curve kind.
  struct Curve {
    const char* name;   // file stem
    const char* title;  // y axis
    std::vector<const char*> path;
  };
  const std::vector<Curve> curves = {
      {"accuracy", "generic accuracy (%)", {"server_eval", "generic", "overall"}},
      {"personalized",
       "personalised accuracy (%, mean over clients)",
       {"evaluate", "metrics", "personalized", "mean"}}};
  std::vector<std::string> labels;
  for (const RunResult& r : runs) {
    if (std::find(labels.begin(), labels.end(), r.label) == labels.end()) labels.push_back(r.label);
  }
  std::error_code ec;
  fs::create_directories(fs::path(out_dir) / "curves", ec);
  if (ec) return Status::IOError(out_dir + "/curves: cannot create: " + ec.message());

  std::vector<std::string> written;
  for (const Curve& curve : curves) {
    std::vector<std::pair<std::string, std::string>> series;  // label, data file
    for (const std::string& label : labels) {
      std::map<int, std::vector<double>> by_round;
      for (const RunResult& r : runs) {
        if (r.label != label) continue;
        for (const nlohmann::json& line : r.lines) {
          const nlohmann::json* node = &line;
          for (const char* key : curve.path) {
            if (!node->is_object() || !node->contains(key)) {
              node = nullptr;
              break;
            }
            node = &(*node)[key];
          }
          if (node != nullptr && node->is_number() && line.contains("round")) {
            by_round[line["round"].get<int>()].push_back(node->get<double>() * 100);
          }
        }
      }
      if (by_round.empty()) continue;
      const std::string data =
          (fs::path(out_dir) / "curves" / (std::string(curve.name) + "-" + label + ".dat"))
              .string();
      std::ofstream out(data);
      out << "# round mean std (" << curve.title << ", over seeds)\n";
      for (const auto& [round, values] : by_round) {
        nlohmann::json stat = mean_std(values);
        out << round << " " << stat["mean"].get<double>() << " "
            << (stat["std"].is_number() ? stat["std"].get<double>() : 0.0) << "\n";
      }
      if (!out) return Status::IOError(data + ": cannot write");
      series.emplace_back(label, data);
    }
    if (series.empty()) continue;
    const std::string png = (fs::path(out_dir) / (std::string(curve.name) + ".png")).string();
    const std::string script =
        (fs::path(out_dir) / "curves" / (std::string(curve.name) + ".gp")).string();
    {
      std::ofstream gp(script);
      gp << "set terminal pngcairo size 960,600 noenhanced\n"
         << "set output '" << png << "'\n"
         << "set title '" << curve.title << " by round (mean over seeds)'\n"
         << "set xlabel 'round'\nset ylabel '" << curve.title << "'\n"
         << "set key bottom right\nset grid\n"
         << "plot ";
      for (size_t i = 0; i < series.size(); ++i) {
        gp << (i ? ", \\\n     " : "") << "'" << series[i].second
           << "' using 1:2 with linespoints title '" << series[i].first << "'";
      }
      gp << "\n";
      if (!gp) return Status::IOError(script + ": cannot write");
    }
    FEDTAIL_RETURN_IF_ERROR(run_gnuplot(gnuplot, script));
    written.push_back(png);
  }
  if (has_simulated_time(runs)) {
    FEDTAIL_ASSIGN_OR_RETURN(std::string png, draw_time_curve(runs, out_dir, gnuplot));
    if (!png.empty()) written.push_back(png);
  }
  return written;
}

}  // namespace fedtail::simulation
