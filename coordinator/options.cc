#include "coordinator/options.h"

#include <algorithm>
#include <sstream>

#include "common/base/json_reader.h"

namespace fedtail::coordinator {
namespace {

std::string number_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

Result<FederationOptions> parse_federation_options(const nlohmann::json& json,
                                                   const std::string& path) {
  FederationOptions options;
  JsonReader r(json, path);
  r.read("min_available_clients", &options.min_available_clients);
  r.check(options.min_available_clients >= 1, "min_available_clients",
          "must be >= 1 (got " + std::to_string(options.min_available_clients) + ")");
  r.read("round_timeout_s", &options.round_timeout_s);
  r.check(options.round_timeout_s > 0, "round_timeout_s",
          "must be > 0 (got " + number_text(options.round_timeout_s) + ")");
  r.read("poll_timeout_ms", &options.poll_timeout_ms);
  r.check(options.poll_timeout_ms >= 1, "poll_timeout_ms",
          "must be >= 1 (got " + std::to_string(options.poll_timeout_ms) + ")");
  r.read("heartbeat_interval_ms", &options.heartbeat_interval_ms);
  r.check(options.heartbeat_interval_ms >= 1, "heartbeat_interval_ms",
          "must be >= 1 (got " + std::to_string(options.heartbeat_interval_ms) + ")");
  r.read("client_timeout_s", &options.client_timeout_s);
  r.check(options.client_timeout_s > 0, "client_timeout_s",
          "must be > 0 (got " + number_text(options.client_timeout_s) + ")");
  // A client that polls or beats as told must never look dead.
  const double longest_silence_ms =
      std::max(options.poll_timeout_ms, options.heartbeat_interval_ms);
  r.check(options.client_timeout_s * 1000 > longest_silence_ms, "client_timeout_s",
          "must exceed poll_timeout_ms and heartbeat_interval_ms (got " +
              number_text(options.client_timeout_s) + " s, longest expected silence " +
              number_text(longest_silence_ms) + " ms)");
  r.read("max_update_bytes", &options.max_update_bytes);
  r.check(options.max_update_bytes >= 1, "max_update_bytes", "must be >= 1 (got 0)");
  r.read("max_concurrent_uploads", &options.max_concurrent_uploads);
  r.check(options.max_concurrent_uploads >= 1, "max_concurrent_uploads",
          "must be >= 1 (got " + std::to_string(options.max_concurrent_uploads) + ")");
  r.read("server_eval", &options.server_eval);
  r.read("max_examples_per_client", &options.max_examples_per_client);
  r.check(options.max_examples_per_client >= 0, "max_examples_per_client",
          "must be >= 0 (got " + std::to_string(options.max_examples_per_client) + ")");
  r.read("max_clients", &options.max_clients);
  r.check(options.max_clients >= 1, "max_clients",
          "must be >= 1 (got " + std::to_string(options.max_clients) + ")");
  r.read("max_virtual_clients_per_session", &options.max_virtual_clients_per_session);
  r.check(options.max_virtual_clients_per_session >= 1, "max_virtual_clients_per_session",
          "must be >= 1 (got " + std::to_string(options.max_virtual_clients_per_session) + ")");
  r.read("upload_idle_timeout_s", &options.upload_idle_timeout_s);
  r.check(options.upload_idle_timeout_s > 0, "upload_idle_timeout_s",
          "must be > 0 (got " + number_text(options.upload_idle_timeout_s) + ")");
  r.read("upload_min_bytes_per_s", &options.upload_min_bytes_per_s);
  r.check(options.upload_min_bytes_per_s >= 0, "upload_min_bytes_per_s",
          "must be >= 0 (got " + number_text(options.upload_min_bytes_per_s) + ")");
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  return options;
}

Result<CoordinatorOptions> parse_coordinator_options(const nlohmann::json& sections) {
  if (!sections.is_object()) {
    return Status::InvalidArgument("config: expected an object (got " +
                                   std::string(sections.type_name()) + ")");
  }
  CoordinatorOptions options;
  JsonReader r(sections, "config");
  r.read_required("rounds", &options.rounds);
  r.check(options.rounds >= 1, "rounds",
          "must be >= 1 (got " + std::to_string(options.rounds) + ")");
  FEDTAIL_RETURN_IF_ERROR(r.status());

  if (!sections.contains("strategy") || sections.at("strategy").is_null()) {
    return Status::InvalidArgument("config.strategy: missing required field");
  }
  const nlohmann::json& strategy = sections.at("strategy");
  if (!strategy.is_object()) {
    return Status::InvalidArgument("config.strategy: expected an object (got " +
                                   std::string(strategy.type_name()) + ")");
  }
  auto name = strategy.find("name");
  if (name == strategy.end() || name->is_null()) {
    return Status::InvalidArgument("config.strategy.name: missing required field");
  }
  if (!name->is_string() || name->get<std::string>().empty()) {
    return Status::InvalidArgument("config.strategy.name: expected a non-empty string (got " +
                                   name->dump() + ")");
  }
  options.strategy_name = name->get<std::string>();
  options.strategy_config = strategy;
  options.strategy_config.erase("name");

  const nlohmann::json empty = nlohmann::json::object();
  auto federation = sections.find("federation");
  FEDTAIL_ASSIGN_OR_RETURN(
      options.federation,
      parse_federation_options(federation == sections.end() ? empty : *federation,
                               "config.federation"));
  auto secagg = sections.find("secagg");
  FEDTAIL_ASSIGN_OR_RETURN(
      options.secagg, parse_secagg_options(secagg == sections.end() ? nlohmann::json() : *secagg));
  auto privacy = sections.find("privacy");
  FEDTAIL_ASSIGN_OR_RETURN(
      options.privacy,
      parse_privacy_options(privacy == sections.end() ? nlohmann::json() : *privacy));
  auto devices = sections.find("devices");
  FEDTAIL_ASSIGN_OR_RETURN(
      options.devices, parse_device_options(devices == sections.end() ? nlohmann::json() : *devices,
                                            "config.devices", ""));
  if (options.privacy.mode == PrivacyOptions::Mode::kDistributed && !options.secagg.enabled) {
    return Status::InvalidArgument(
        "config.privacy.mode: \"distributed\" needs the config.secagg section (without secure "
        "aggregation the coordinator would see each client's lightly noised update; use "
        "\"central\")");
  }
  if (options.privacy.adaptive &&
      (options.privacy.mode != PrivacyOptions::Mode::kCentral || options.secagg.enabled)) {
    return Status::InvalidArgument(
        "config.privacy.adaptive_clipping: only with mode \"central\" and without secagg (the "
        "coordinator counts the clipped updates, so it must see them)");
  }
  return options;
}

}  // namespace fedtail::coordinator
