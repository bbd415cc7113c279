#include "common/learning/run_config.h"

#include "common/base/json_reader.h"

namespace fedtail {

Result<RunConfig> parse_run_config(const nlohmann::json& json,
                                   const std::vector<std::string>& extra_keys) {
  RunConfig config;
  JsonReader r(json, "config");
  r.read("seed", &config.seed);
  r.read("threads", &config.threads);
  r.check(config.threads >= 0, "threads", "must be >= 0 (0 = all cores)");
  r.read("device", &config.device);
  for (const auto& key : extra_keys) {
    nlohmann::json value;
    r.read_raw(key, &value);
    if (!value.is_null()) config.extra[key] = value;
  }
  FEDTAIL_RETURN_IF_ERROR(r.status());

  const nlohmann::json empty = nlohmann::json::object();
  auto section = [&](const char* key) -> const nlohmann::json& {
    r.ignore(key);
    return json.contains(key) ? json.at(key) : empty;
  };
  FEDTAIL_ASSIGN_OR_RETURN(config.data, parse_data_options(section("data"), "config.data"));
  FEDTAIL_ASSIGN_OR_RETURN(config.model, parse_model_options(section("model"), "config.model"));
  FEDTAIL_ASSIGN_OR_RETURN(config.local,
                           parse_local_train_options(section("local"), "config.local"));
  FEDTAIL_ASSIGN_OR_RETURN(config.eval, parse_eval_options(section("eval"), "config.eval"));
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return config;
}

Result<RunConfig> load_run_config(const std::string& path,
                                  const std::vector<std::string>& extra_keys) {
  FEDTAIL_ASSIGN_OR_RETURN(nlohmann::json json, load_json_file(path));
  Result<RunConfig> config = parse_run_config(json, extra_keys);
  if (!config.ok()) return config.status().with_context(path);
  return config;
}

}  // namespace fedtail
