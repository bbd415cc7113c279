// summary.json: the one-file result of a run (docs/architecture.md, "The binaries' contract"),
// built from the metrics lines of metrics.jsonl.
#ifndef FEDTAIL_COORDINATOR_SUMMARY_H_
#define FEDTAIL_COORDINATOR_SUMMARY_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fedtail::coordinator {

struct SummaryInput {
  std::string strategy;
  std::string run_id;
  int rounds_planned = 0;
  int rounds_completed = 0;
  double wall_seconds = 0;
  bool mask_absent_classes = false;  // the personalised evaluation protocol (config.eval)
};

// {"strategy", "run_id", "rounds_planned", "rounds_completed", "wall_seconds",
//  "final": {"round", "generic_accuracy", "generic_by_group": {"many", "medium", "few"},
//            "generic_by_count_rule": {...}, "personalized_accuracy", "personalized_weighted",
//            "personalized_masked"},
//  "refused": {"<kind>": count, ..., "total"}: the "refused" counts of every line, summed
//             (coordinator/refusals.h lists the kinds),
//  "privacy" (config.privacy runs): {"mode", "epsilon", "delta", "noise_multiplier",
//             "rounds_accounted", "budget_exhausted": the run ended before its planned rounds},
//  "secagg" (config.secagg runs): {"rounds", "failed_rounds", "recovered_dropouts"},
//  "last_round": the last metrics line (or null)}.
// "final" comes from the last line that has an evaluation (server_eval.generic.{overall,many,
// medium,few}; evaluate.metrics.personalized.{mean,weighted}). Accuracies are fractions in [0, 1];
// a value the strategy did not report is null.
nlohmann::json make_summary(const SummaryInput& input, const std::vector<nlohmann::json>& lines);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_SUMMARY_H_
