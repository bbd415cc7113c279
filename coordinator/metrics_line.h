// Formatting helpers for a round's metrics line (the JSON object the engine thread builds for
// metrics.jsonl, see round_engine.h) and for the one-line round summary it logs from that line.
#ifndef FEDTAIL_COORDINATOR_METRICS_LINE_H_
#define FEDTAIL_COORDINATOR_METRICS_LINE_H_

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "strategies/strategy.h"

namespace fedtail::coordinator {

// A phase's failures as the metrics line lists them: [{"client_id", "reason"}, ...], in the order
// given.
nlohmann::json failures_json(const std::vector<strategies::ClientFailure>& failures);

// A number at `path` in `json`, if there is one.
std::optional<double> number_at(const nlohmann::json& json,
                                std::initializer_list<const char*> path);

// `value` printed with the printf `format` (one double conversion, e.g. "%.4f"; at most 31
// characters); "-" when there is no value.
std::string format_number(std::optional<double> value, const char* format);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_METRICS_LINE_H_
