// The metrics line's formatting helpers (see metrics_line.h): the failures list of a phase, and the
// lookups and number formatting of the round summary logged from the line. The engine thread that
// builds the line is in round_engine.cc.
#include "coordinator/metrics_line.h"

#include <cstdio>

namespace fedtail::coordinator {

nlohmann::json failures_json(const std::vector<strategies::ClientFailure>& failures) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& f : failures) list.push_back({{"client_id", f.client_id}, {"reason", f.reason}});
  return list;
}

// A number at `path` in `json`, if there is one.
std::optional<double> number_at(const nlohmann::json& json,
                                std::initializer_list<const char*> path) {
  const nlohmann::json* node = &json;
  for (const char* key : path) {
    if (!node->is_object()) return std::nullopt;
    auto it = node->find(key);
    if (it == node->end()) return std::nullopt;
    node = &*it;
  }
  if (!node->is_number()) return std::nullopt;
  return node->get<double>();
}

std::string format_number(std::optional<double> value, const char* format) {
  if (!value) return "-";
  char text[32];
  std::snprintf(text, sizeof(text), format, *value);
  return text;
}

}  // namespace fedtail::coordinator
