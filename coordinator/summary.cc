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
  // Differential privacy: the accountant's last word; the run ended early only at its budget.
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (!it->is_object() || !it->contains("privacy") || !(*it)["privacy"].is_object()) continue;
    const nlohmann::json& p = (*it)["privacy"];
    summary["privacy"] = {{"mode", p.value("mode", nlohmann::json())},
                          {"epsilon", p.value("epsilon", nlohmann::json())},
                          {"delta", p.value("delta", nlohmann::json())},
                          {"noise_multiplier", p.value("noise_multiplier", nlohmann::json())},
                          {"rounds_accounted", p.value("steps", nlohmann::json())},
                          {"budget_exhausted", input.rounds_completed < input.rounds_planned}};
    break;
  }
  // Secure aggregation: rounds run with it, rounds it failed, dropouts recovered.
  int secure_rounds = 0;
  int failed_rounds = 0;
  int64_t recovered = 0;
  for (const nlohmann::json& line : lines) {
    if (!line.is_object() || !line.contains("secagg") || !line["secagg"].is_object()) continue;
    const nlohmann::json& s = line["secagg"];
    ++secure_rounds;
    if (s.contains("error")) ++failed_rounds;
    if (s.contains("recovered_dropouts") && s["recovered_dropouts"].is_number_integer()) {
      recovered += s["recovered_dropouts"].get<int64_t>();
    }
  }
  if (secure_rounds > 0) {
    summary["secagg"] = {{"rounds", secure_rounds},
                         {"failed_rounds", failed_rounds},
                         {"recovered_dropouts", recovered}};
  }
  summary["refused"] = sum_refusals(lines);
  summary["last_round"] = lines.empty() ? nlohmann::json() : lines.back();
  return summary;
}

}  // namespace fedtail::coordinator
