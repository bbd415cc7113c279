#include "coordinator/summary.h"

#include "coordinator/refusals.h"

namespace fedtail::coordinator {
namespace {

// The number at `path` inside `json`, or null.
nlohmann::json number_at(const nlohmann::json& json, std::initializer_list<const char*> path) {
  const nlohmann::json* node = &json;
  for (const char* key : path) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(key);
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node->is_number() ? *node : nlohmann::json();
}

bool has_evaluation(const nlohmann::json& line) {
  return line.contains("server_eval") || line.contains("evaluate");
}

}  // namespace

nlohmann::json make_summary(const SummaryInput& input, const std::vector<nlohmann::json>& lines) {
  nlohmann::json summary = {{"strategy", input.strategy},
                            {"run_id", input.run_id},
                            {"rounds_planned", input.rounds_planned},
                            {"rounds_completed", input.rounds_completed},
                            {"wall_seconds", input.wall_seconds}};
  const nlohmann::json* evaluated = nullptr;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (has_evaluation(*it)) {
      evaluated = &*it;
      break;
    }
  }
  const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& e = evaluated ? *evaluated : none;
  nlohmann::json masked = nullptr;
  if (e.contains("evaluate")) {
    const nlohmann::json& metrics = e["evaluate"].value("metrics", nlohmann::json::object());
    if (metrics.is_object() && metrics.contains("masked") && metrics["masked"].is_boolean()) {
      masked = metrics["masked"];
    } else {
      masked = input.mask_absent_classes;
    }
  }
  summary["final"] = {
      {"round", evaluated ? e.value("round", nlohmann::json()) : nlohmann::json()},
      {"generic_accuracy", number_at(e, {"server_eval", "generic", "overall"})},
      {"generic_by_group",
       {{"many", number_at(e, {"server_eval", "generic", "many"})},
        {"medium", number_at(e, {"server_eval", "generic", "medium"})},
        {"few", number_at(e, {"server_eval", "generic", "few"})}}},
      {"generic_by_count_rule",
       {{"many", number_at(e, {"server_eval", "generic_by_count_rule", "many"})},
        {"medium", number_at(e, {"server_eval", "generic_by_count_rule", "medium"})},
        {"few", number_at(e, {"server_eval", "generic_by_count_rule", "few"})}}},
      {"personalized_accuracy", number_at(e, {"evaluate", "metrics", "personalized", "mean"})},
      {"personalized_weighted", number_at(e, {"evaluate", "metrics", "personalized", "weighted"})},
      {"personalized_masked", masked}};
  summary["refused"] = sum_refusals(lines);
  summary["last_round"] = lines.empty() ? nlohmann::json() : lines.back();
  return summary;
}

}  // namespace fedtail::coordinator
