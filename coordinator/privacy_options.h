// The run config's "secagg" and "privacy" sections: secure aggregation (SecAgg+) and differential
// privacy (DP-FedAvg) for strategies whose aggregation is a weighted mean
// (ServerStrategy::supports_mean_aggregation). README "Privacy" states what each mode defends
// against.
//
//   "secagg": {"neighbours": 16, "reconstruction_threshold": 0.5, "max_dropout_fraction": 0.3,
//              "clip": 1.0, "bits": 20, "stage_timeout_s": 60}
//   "privacy": {"mode": "central" | "distributed", "clip_norm": 1.0, "noise_multiplier": 1.0,
//               "target_epsilon": null, "delta": 1e-5, "population": 0,
//               "adaptive_clipping": {"target_quantile": 0.5, "learning_rate": 0.2,
//                                     "count_noise_multiplier": 10}}
#ifndef FEDTAIL_COORDINATOR_PRIVACY_OPTIONS_H_
#define FEDTAIL_COORDINATOR_PRIVACY_OPTIONS_H_

#include <nlohmann/json.hpp>
#include <optional>

#include "common/base/status.h"
#include "common/privacy/quantize.h"
#include "common/privacy/secagg.h"

namespace fedtail::coordinator {

struct SecAggOptions {
  bool enabled = false;  // the section is present (and not null)
  // neighbours (even, >= 2; default 16), reconstruction_threshold (fraction of a neighbourhood,
  // (0, 1]; default 0.5), max_dropout_fraction ([0, 1); default 0.3).
  privacy::SecAggParams params;
  // clip: the bound on each client's weighted change per value (> 0; default 1.0); bits: the
  // fixed-point width (1..31; default 20; clients a round * (2^bits - 1) must stay below 2^32).
  privacy::QuantizeParams quantize;
  // Deadline of each key-exchange stage (advertise, share, receive, unmask), in seconds; the
  // masked-input stage is the fit phase (federation.round_timeout_s). > 0; default 60.
  double stage_timeout_s = 60;
};

struct PrivacyOptions {
  enum class Mode {
    kOff,
    // DP-FedAvg (McMahan et al. 2018): the coordinator clips each client's change to clip_norm,
    // sums them, adds N(0, (noise_multiplier · clip_norm)^2) to each value and divides by the
    // clients selected. Trusts the coordinator with individual updates; with secagg the clients
    // clip and the coordinator noises the unmasked sum (it trusts the coordinator to add noise,
    // not with the updates).
    kCentral,
    // Each client clips its change and adds its share of the noise,
    // N(0, (noise_multiplier · clip_norm)^2 / m) for m selected clients, before upload; with
    // secagg the coordinator sees only the noised sum. Requires the secagg section.
    kDistributed,
  };
  Mode mode = Mode::kOff;
  double clip_norm = 1.0;  // C (the initial C with adaptive clipping); > 0
  // z: the noise's standard deviation over clip_norm. >= 0. When absent and target_epsilon is
  // set, the smallest z that keeps all the run's rounds within target_epsilon
  // (noise_multiplier_for).
  std::optional<double> noise_multiplier;
  double delta = 1e-5;                   // in (0, 1)
  std::optional<double> target_epsilon;  // > 0: no round starts that would exceed it
  // The clients the rounds sample from (the sampling rate q = selected / population); 0 = the
  // run's config.data.clients.
  int64_t population = 0;
  // Adaptive clipping (Andrew et al. 2021), central mode without secagg only: after each round
  // C <- C · exp(-learning_rate · (b - target_quantile)), b the noised fraction of clients whose
  // change was within C (its count noised with std count_noise_multiplier · ... / m).
  bool adaptive = false;
  double target_quantile = 0.5;        // in (0, 1)
  double clip_learning_rate = 0.2;     // > 0
  double count_noise_multiplier = 10;  // σ_b > 0

  bool enabled() const { return mode != Mode::kOff; }
};

// "central" / "distributed" / "off".
const char* privacy_mode_name(PrivacyOptions::Mode mode);

// Parse the sections (null or absent: disabled). kInvalidArgument naming the field
// ("config.secagg.neighbours: ...") for an unknown key or a bad value.
Result<SecAggOptions> parse_secagg_options(const nlohmann::json& section);
Result<PrivacyOptions> parse_privacy_options(const nlohmann::json& section);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_PRIVACY_OPTIONS_H_
