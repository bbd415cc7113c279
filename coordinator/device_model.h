// DeviceModel: simulated devices and the simulated clock of a simulation (the run config's
// "devices" section; fedtail-sim copies its config's simulation.devices there).
//
// Each client gets a device profile: how much slower than this machine it computes, its network
// bandwidth and latency, and when it is available. A task's result then arrives, on the simulated
// clock, at
//     start + compute_s × slowdown + (bytes_down + bytes_up) / bandwidth + 2 × latency
// where compute_s is what the client measured (devices.compute "measured", the default) or
// examples × seconds_per_example ("modeled": reproducible to the bit, and known before the task
// runs). The engine orders results, deadlines and departures by this clock without sleeping
// through it (docs/architecture.md, "Simulated time").
//
//   "devices": {
//     "compute": "measured",              // or "modeled"
//     "deadline_s": 0,                    // synchronous rounds: fit deadline, simulated seconds
//     "seconds_per_example": 0.0005,      // "modeled": compute seconds per example trained at
//                                         //   slowdown 1 (> 0)
//     "slowdown": {"distribution": "lognormal", "median": 1.0, "sigma": 0.6},
//     "bandwidth_mbps": {"distribution": "uniform", "min": 5, "max": 50},
//     "latency_ms": {"distribution": "constant", "value": 50},
//     "trace": "devices.csv",             // instead of the three distributions: one profile per
//                                         //   row, each client takes a row drawn from the seed
//     "availability": {"model": "always"} // or {"model": "exponential", "mean_on_s": 600,
//                                         //   "mean_off_s": 120}, or {"trace": "availability.csv"}
//   }
// Distributions: {"distribution": "constant", "value": v}, "uniform" {min, max}, "lognormal"
// {median, sigma} (exp(ln median + sigma·N(0,1))), or a bare number (constant). Defaults: slowdown
// 1, bandwidth 100 Mbit/s, latency 0 ms, always available.
//
// Trace formats (CSV, '#' comments and a header line allowed, columns by header name):
//   devices.csv:      slowdown,bandwidth_mbps,latency_ms
//   availability.csv: client,off_from_s,off_to_s   (client = its id, e.g. client-3, or its index
//                     3; a client is off during each [off_from_s, off_to_s) interval it lists)
// Relative paths are resolved against the directory given to parse_device_options.
//
// Every draw comes from Rng::derive(seed, "devices"/"availability", {client index}) where a
// client's index is N for an id "client-N" and a stable hash of the id otherwise: the same seed
// gives every client the same device in every process and on resume.
//
// Plain value types; a DeviceModel is immutable after create() and thread-safe.
#ifndef FEDTAIL_COORDINATOR_DEVICE_MODEL_H_
#define FEDTAIL_COORDINATOR_DEVICE_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/base/rng.h"
#include "common/base/status.h"

namespace fedtail::coordinator {

// One of the distributions above.
struct Distribution {
  enum class Kind { kConstant, kUniform, kLogNormal };
  Kind kind = Kind::kConstant;
  double a = 1;  // constant: value; uniform: min; lognormal: median
  double b = 0;  // uniform: max; lognormal: sigma
};

struct DeviceOptions {
  bool enabled = false;  // a "devices" section was given
  bool modeled_compute = false;
  double seconds_per_example = 0;
  Distribution slowdown{Distribution::Kind::kConstant, 1, 0};
  Distribution bandwidth_mbps{Distribution::Kind::kConstant, 100, 0};
  Distribution latency_ms{Distribution::Kind::kConstant, 0, 0};
  std::string trace;  // resolved path; empty: the distributions
  enum class Availability { kAlways, kExponential, kTrace };
  Availability availability = Availability::kAlways;
  double mean_on_s = 0;
  double mean_off_s = 0;
  std::string availability_trace;  // resolved path
  // "deadline_s": a synchronous round's fit deadline on the simulated clock (0 = none): results
  // arriving later are refused as late and the round ends at the deadline. >= 0.
  double deadline_s = 0;
};

// Parses a "devices" object at JSON path `path` (e.g. "config.devices"); null or absent gives
// enabled = false. `base_dir` resolves relative trace paths. kInvalidArgument naming the JSON path:
// unknown keys, a distribution with a bad shape (min > max, a non-positive median or value where
// a positive one is needed, sigma < 0), "modeled" without seconds_per_example > 0, a trace given
// with the distributions.
Result<DeviceOptions> parse_device_options(const nlohmann::json& json, const std::string& path,
                                           const std::string& base_dir);

// One client's device.
struct DeviceProfile {
  double slowdown = 1;         // simulated compute seconds per measured (or modeled) second
  double bandwidth_bps = 1e8;  // bits per second, both directions
  double latency_s = 0;        // one way
};

// The client's index for the draws: N for "client-N", else a stable 63-bit hash of the id (FNV-1a).
uint64_t device_index(const std::string& client_id);

class DeviceModel {
 public:
  // Reads the traces (kInvalidArgument naming the file and line for a malformed row, kNotFound for
  // a missing file, kInvalidArgument for an empty device trace) and fixes the run's seed.
  static Result<std::unique_ptr<DeviceModel>> create(const DeviceOptions& options, uint64_t seed);

  const DeviceOptions& options() const { return options_; }

  // The client's profile (drawn once per client, then cached).
  DeviceProfile profile(const std::string& client_id) const;

  // Simulated seconds from handing a task out to its result's arrival: compute × slowdown +
  // (bytes_down + bytes_up) × 8 / bandwidth + 2 × latency, where compute is `measured_compute_s`,
  // or examples × seconds_per_example with "modeled" compute.
  double task_seconds(const std::string& client_id, double measured_compute_s, int64_t examples,
                      uint64_t bytes_down, uint64_t bytes_up) const;
  // A lower bound of task_seconds known before the task runs: the network part without the upload
  // with "measured" compute (0 compute, 0 bytes up); the modeled compute and the download with
  // "modeled" compute, given the examples the client will train on (`examples`).
  double task_seconds_lower_bound(const std::string& client_id, int64_t examples,
                                  uint64_t bytes_down) const;

  // Whether the client is available at simulated time `t` (seconds since the run began).
  bool available(const std::string& client_id, double t) const;
  // When the client next goes offline at or after `t` (`t` itself when it is off at `t`), if it
  // does before `until` (which may be +inf).
  std::optional<double> next_offline(const std::string& client_id, double t, double until) const;
  // The earliest time after `t` at which any of `clients` becomes available (none: nullopt).
  std::optional<double> next_online(const std::vector<std::string>& client_ids, double t) const;

 private:
  using Intervals = std::vector<std::pair<double, double>>;

  // One client's availability: its off intervals [from, to), sorted, disjoint and non-empty.
  // "always" and a trace: complete (known_until = +inf). "exponential": generated one on or off
  // period at a time from the client's own Rng; every off interval that starts before
  // known_until is in `off` and final (periods have positive length, so an off period is never
  // extended by the next one).
  struct ClientAvailability {
    Intervals off;
    double known_until = 0;
    std::optional<Rng> rng;    // "exponential": the client's stream
    bool next_is_off = false;  // "exponential": the kind of the period starting at known_until
  };

  DeviceModel(DeviceOptions options, uint64_t seed);
  // The client's availability record (created on first use). Caller holds mu_.
  ClientAvailability& availability_locked(const std::string& client_id) const;
  // Generates the next period of an "exponential" record. Caller holds mu_.
  void extend_locked(ClientAvailability* a) const;

  // Constant after construction.
  const DeviceOptions options_;
  const uint64_t seed_;
  std::vector<DeviceProfile> trace_rows_;    // from options_.trace
  std::map<uint64_t, Intervals> trace_off_;  // availability trace, by device_index

  // Caches, filled on first use: guarded by mu_.
  mutable std::mutex mu_;
  mutable std::map<std::string, DeviceProfile> profiles_;
  mutable std::map<std::string, ClientAvailability> availability_;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_DEVICE_MODEL_H_
