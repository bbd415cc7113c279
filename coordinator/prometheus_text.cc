#include "coordinator/prometheus_text.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

namespace fedtail::coordinator {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

// Builds the text one family at a time: HELP and TYPE, then the family's samples.
class Writer {
 public:
  void family(const std::string& name, const char* type, const char* help) {
    text_ += "# HELP " + name + " " + help + "\n";
    text_ += "# TYPE " + name + " " + type + "\n";
  }
  void sample(const std::string& name, const Labels& labels, const std::string& value) {
    text_ += name;
    if (!labels.empty()) {
      text_ += "{";
      for (size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) text_ += ",";
        text_ += labels[i].first + "=\"" + prometheus_label_escape(labels[i].second) + "\"";
      }
      text_ += "}";
    }
    text_ += " " + value + "\n";
  }
  void sample(const std::string& name, const Labels& labels, double value) {
    sample(name, labels, prometheus_number(value));
  }
  // A family with one unlabelled sample.
  void single(const std::string& name, const char* type, const char* help, double value) {
    family(name, type, help);
    sample(name, {}, value);
  }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

}  // namespace

std::string prometheus_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[40];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buffer, sizeof(buffer), "%.0f", value);
    return buffer;
  }
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

std::string prometheus_label_escape(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string prometheus_text(const LiveSnapshot& snapshot) {
  const LiveProbe probe = snapshot.probe.value_or(LiveProbe());
  const bool running = snapshot.state == LiveRunState::kRunning;
  const bool open = running && probe.phase != "idle";
  Writer out;
  out.family("fedtail_run_info", "gauge",
             "The current run: its id, strategy, label and state (the value is always 1).");
  out.sample("fedtail_run_info",
             {{"run_id", snapshot.run.run_id},
              {"strategy", snapshot.run.strategy},
              {"label", snapshot.run.label},
              {"state", live_run_state_name(snapshot.state)}},
             1);
  out.single("fedtail_rounds_planned", "gauge", "Rounds the run is configured for.",
             snapshot.run.rounds);
  out.single("fedtail_round", "gauge", "The round in progress, or the last one completed.",
             running && probe.round > 0 ? probe.round : snapshot.rounds_completed);
  out.single("fedtail_rounds_completed_total", "counter",
             "Rounds completed (metrics lines written).", snapshot.rounds_completed);
  out.single("fedtail_clients_connected", "gauge", "Clients of live sessions.",
             running ? probe.clients_connected : 0);
  out.single("fedtail_clients_selected", "gauge",
             "Clients given a task in the open phase (0 between phases).",
             open ? probe.selected : 0);
  out.single("fedtail_results_received", "gauge",
             "Results accepted so far in the open phase (0 between phases).",
             open ? probe.received : 0);
  out.single("fedtail_bytes_down_total", "counter",
             "Payload bytes sent to clients in completed rounds.",
             static_cast<double>(snapshot.bytes_down));
  out.single("fedtail_bytes_up_total", "counter",
             "Payload bytes received from clients in completed rounds.",
             static_cast<double>(snapshot.bytes_up));
  out.single("fedtail_fit_failures_total", "counter",
             "Fit tasks of completed rounds that brought no accepted update.",
             static_cast<double>(snapshot.fit_failures));

  out.family("fedtail_refusals_total", "counter", "Inputs the coordinator refused, by kind.");
  for (const auto& [kind, n] : snapshot.refusals) {
    out.sample("fedtail_refusals_total", {{"kind", kind}}, static_cast<double>(n));
  }

  out.family("fedtail_round_duration_seconds", "histogram",
             "Wall time of each completed round (seconds).");
  double sum = 0;
  for (double seconds : snapshot.round_seconds) sum += seconds;
  for (double bound : kRoundSecondsBuckets) {
    uint64_t count = 0;
    for (double seconds : snapshot.round_seconds) count += seconds <= bound;
    out.sample("fedtail_round_duration_seconds_bucket", {{"le", prometheus_number(bound)}},
               static_cast<double>(count));
  }
  const double count = static_cast<double>(snapshot.round_seconds.size());
  out.sample("fedtail_round_duration_seconds_bucket", {{"le", "+Inf"}}, count);
  out.sample("fedtail_round_duration_seconds_sum", {}, sum);
  out.sample("fedtail_round_duration_seconds_count", {}, count);

  out.family("fedtail_accuracy", "gauge",
             "Latest accuracy by group: all, many, medium, few (server-side generic evaluation), "
             "personalized (mean of federated evaluation).");
  for (const char* group : {"all", "many", "medium", "few", "personalized"}) {
    auto it = snapshot.accuracy.find(group);
    if (it != snapshot.accuracy.end())
      out.sample("fedtail_accuracy", {{"group", group}}, it->second);
  }
  return out.take();
}

}  // namespace fedtail::coordinator
