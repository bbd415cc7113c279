// RunConfig: the top-level JSON configuration of a fedtail run, shared by every binary.
//
//   {
//     "seed": 1,              // the run seed: every random choice derives from it
//     "threads": 0,           // LibTorch intra-op threads; 0 = all cores
//     "device": "auto",       // auto | cpu | cuda | cuda:i
//     "data":  {...},         // DataOptions (common/data/data_options.h)
//     "model": {...},         // ModelOptions (common/learning/model_options.h)
//     "local": {...},         // LocalTrainOptions (common/learning/train_options.h)
//     "eval":  {...}          // EvalOptions (common/learning/train_options.h)
//   }
// Sections other binaries own (e.g. "strategy", "rounds") are passed through in `extra` untouched;
// a key that no section claims is an error naming its JSON path.
#ifndef FEDTAIL_COMMON_LEARNING_RUN_CONFIG_H_
#define FEDTAIL_COMMON_LEARNING_RUN_CONFIG_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/data/data_options.h"
#include "common/learning/model_options.h"
#include "common/learning/train_options.h"

namespace fedtail {

struct RunConfig {
  uint64_t seed = 1;            // run seed
  int threads = 0;              // LibTorch threads, 0 = all cores
  std::string device = "auto";  // auto | cpu | cuda | cuda:i
  DataOptions data;
  ModelOptions model;
  LocalTrainOptions local;
  EvalOptions eval;
  nlohmann::json extra = nlohmann::json::object();  // keys listed in `extra_keys`, unparsed
};

// Parses `json` (the whole file's object; errors start with "config."). Keys in `extra_keys` are
// copied into RunConfig::extra for the caller to parse; any other unknown key is kInvalidArgument.
Result<RunConfig> parse_run_config(const nlohmann::json& json,
                                   const std::vector<std::string>& extra_keys = {});

// Reads and parses a config file; errors are prefixed with the file name.
Result<RunConfig> load_run_config(const std::string& path,
                                  const std::vector<std::string>& extra_keys = {});

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_LEARNING_RUN_CONFIG_H_
