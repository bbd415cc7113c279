// CoordinatorOptions: the coordinator's part of the run config — "rounds", "strategy" (its name and
// the strategy's own options) and "federation" (how the coordinator runs rounds and treats
// clients).
//
//   "rounds": 10,
//   "strategy": {"name": "fedavg", ...options handed to the strategy factory without "name"},
//   "federation": {"min_available_clients": 2, "round_timeout_s": 600, "poll_timeout_ms": 20000,
//                  "heartbeat_interval_ms": 5000, "client_timeout_s": 60,
//                  "max_update_bytes": 1073741824, "max_concurrent_uploads": 4,
//                  "server_eval": true, "max_examples_per_client": 0, "max_clients": 10000,
//                  "max_virtual_clients_per_session": 4096, "upload_idle_timeout_s": 30,
//                  "upload_min_bytes_per_s": 16384}
#ifndef FEDTAIL_COORDINATOR_OPTIONS_H_
#define FEDTAIL_COORDINATOR_OPTIONS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/base/status.h"
#include "coordinator/device_model.h"
#include "coordinator/privacy_options.h"

namespace fedtail::coordinator {

// The most examples a client may declare at Join (2^40): a trillion examples is beyond any real
// client, and with it the example-weighted sums of 2^23 clients cannot overflow int64.
constexpr int64_t kMaxDeclaredExamples = int64_t{1} << 40;

struct FederationOptions {
  // Clients that must be connected before a round starts. >= 1; default 2.
  int min_available_clients = 2;
  // Deadline of a round's fit phase, and separately of its evaluation phase, in seconds. > 0;
  // default 600.
  double round_timeout_s = 600;
  // Longest time a PullTask is held before the answer WAIT, in milliseconds. >= 1; default 20000.
  int poll_timeout_ms = 20000;
  // How often a busy client should send a heartbeat, in milliseconds (told to clients at Join).
  // >= 1; default 5000.
  int heartbeat_interval_ms = 5000;
  // A client silent (no poll, heartbeat or push) for this long is gone, in seconds: its tasks fail
  // and its id is free to rejoin. Must exceed both poll_timeout_ms and heartbeat_interval_ms;
  // default 60.
  double client_timeout_s = 60;
  // Largest accepted update payload, in bytes. >= 1; default 1 GiB.
  uint64_t max_update_bytes = uint64_t{1} << 30;
  // Uploads decoded at once; bounds the coordinator's memory to about this many models. >= 1;
  // default 4.
  int max_concurrent_uploads = 4;
  // Evaluate the global model on the balanced test set (built from config.data). Default true.
  bool server_eval = true;

  // Limits that bound what any one client can do (see README, "Reliability and security").
  // An update or evaluation report may claim at most the examples its client declared at Join;
  // this caps the declaration too (Joins declaring more are refused). 0 = no cap beyond the
  // declaration and the hard ceiling kMaxDeclaredExamples. >= 0; default 0.
  int64_t max_examples_per_client = 0;
  // Clients (virtual ones included) connected at once; Joins beyond are refused with
  // RESOURCE_EXHAUSTED. >= 1; default 10000.
  int max_clients = 10000;
  // Virtual clients one Join may host (a simulation worker). >= 1; default 4096.
  int max_virtual_clients_per_session = 4096;
  // An upload that sends nothing for this long is cancelled (its slot freed, the task offered
  // again), as is one of a phase that has closed. > 0; default 30.
  double upload_idle_timeout_s = 30;
  // An upload slower than this on average, once it has run for upload_idle_timeout_s, is
  // cancelled. >= 0 (0 = no rate floor); default 16384 (16 KiB/s).
  double upload_min_bytes_per_s = 16384;

  // The most examples a client may declare (and an update or report claim):
  // max_examples_per_client when set, else kMaxDeclaredExamples.
  int64_t max_declared_examples() const {
    return max_examples_per_client > 0 ? max_examples_per_client : kMaxDeclaredExamples;
  }
};

struct CoordinatorOptions {
  // Rounds to run (rounds count from 1). Required; >= 1.
  int rounds = 0;
  // The strategy's registered name (config.strategy.name). Required, non-empty.
  std::string strategy_name;
  // config.strategy without "name": what the strategy factory gets. Always an object.
  nlohmann::json strategy_config = nlohmann::json::object();
  FederationOptions federation;
  SecAggOptions secagg;    // config.secagg (coordinator/privacy_options.h)
  PrivacyOptions privacy;  // config.privacy
  DeviceOptions
      devices;  // config.devices: simulated devices and clock (coordinator/device_model.h)
};

// Reads the "rounds", "strategy", "federation", "secagg", "privacy" and "devices" keys of
// `sections` (RunConfig::extra, or the whole config object: other keys are ignored). Errors are
// kInvalidArgument naming the JSON path, "config.<key>...": a missing "rounds" or "strategy.name",
// a wrong type, an unknown key in "federation", or an absurd value (rounds < 1,
// min_available_clients < 1, a timeout <= 0, client_timeout_s not above the poll timeout and
// heartbeat interval, max_update_bytes < 1, max_concurrent_uploads < 1).
Result<CoordinatorOptions> parse_coordinator_options(const nlohmann::json& sections);

// The "federation" object alone, at JSON path `path` (e.g. "config.federation"); absent keys keep
// their defaults. Errors as above.
Result<FederationOptions> parse_federation_options(const nlohmann::json& json,
                                                   const std::string& path);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_OPTIONS_H_
