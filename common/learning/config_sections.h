// The run config's top-level sections beyond RunConfig's own ("data", "model", "local", "eval",
// "seed", ...): what the coordinator reads (coordinator/options.h) and every process that parses a
// run config must let through as RunConfig::extra.
#ifndef FEDTAIL_COMMON_LEARNING_CONFIG_SECTIONS_H_
#define FEDTAIL_COMMON_LEARNING_CONFIG_SECTIONS_H_

#include <string>
#include <vector>

namespace fedtail {

// "rounds", "strategy", "federation", "secagg", "privacy", "devices".
inline const std::vector<std::string>& coordinator_config_sections() {
  static const std::vector<std::string> sections = {"rounds", "strategy", "federation",
                                                    "secagg", "privacy",  "devices"};
  return sections;
}

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_CONFIG_SECTIONS_H_
