#include "coordinator/privacy_options.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "common/base/json_reader.h"

namespace fedtail::coordinator {
namespace {

std::string number_text(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", v);
  return text;
}

}  // namespace

const char* privacy_mode_name(PrivacyOptions::Mode mode) {
  switch (mode) {
    case PrivacyOptions::Mode::kOff:
      return "off";
    case PrivacyOptions::Mode::kCentral:
      return "central";
    case PrivacyOptions::Mode::kDistributed:
      return "distributed";
  }
  return "?";
}

Result<SecAggOptions> parse_secagg_options(const nlohmann::json& section) {
  SecAggOptions options;
  if (section.is_null()) return options;
  options.enabled = true;
  JsonReader r(section, "config.secagg");
  privacy::SecAggParams& p = options.params;
  r.read("neighbours", &p.neighbours);
  r.check(p.neighbours >= 2 && p.neighbours % 2 == 0, "neighbours",
          "must be an even number >= 2 (got " + std::to_string(p.neighbours) + ")");
  r.read("reconstruction_threshold", &p.reconstruction_threshold);
  r.check(p.reconstruction_threshold > 0 && p.reconstruction_threshold <= 1,
          "reconstruction_threshold",
          "must be a fraction of each neighbourhood in (0, 1] (got " +
              number_text(p.reconstruction_threshold) + ")");
  r.read("max_dropout_fraction", &p.max_dropout_fraction);
  r.check(p.max_dropout_fraction >= 0 && p.max_dropout_fraction < 1, "max_dropout_fraction",
          "must be in [0, 1) (got " + number_text(p.max_dropout_fraction) + ")");
  r.read("clip", &options.quantize.clip);
  r.read("bits", &options.quantize.bits);
  r.read("stage_timeout_s", &options.stage_timeout_s);
  r.check(options.stage_timeout_s > 0, "stage_timeout_s",
          "must be > 0 (got " + number_text(options.stage_timeout_s) + ")");
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  // The 32-bit sum must hold at least two clients; the round checks its own client count.
  FEDTAIL_RETURN_IF_ERROR(privacy::check_quantize_params(options.quantize, 2));
  return options;
}

Result<PrivacyOptions> parse_privacy_options(const nlohmann::json& section) {
  PrivacyOptions options;
  if (section.is_null()) return options;
  JsonReader r(section, "config.privacy");
  std::string mode;
  r.read_required("mode", &mode);
  FEDTAIL_RETURN_IF_ERROR(r.status());
  r.read_enum("mode", &mode, {"central", "distributed"});
  options.mode =
      mode == "central" ? PrivacyOptions::Mode::kCentral : PrivacyOptions::Mode::kDistributed;
  // Optional keys read below only when set: null counts as absent.
  for (const char* key : {"noise_multiplier", "target_epsilon", "adaptive_clipping"}) r.ignore(key);
  r.read("clip_norm", &options.clip_norm);
  r.check(options.clip_norm > 0 && std::isfinite(options.clip_norm), "clip_norm",
          "must be > 0 (got " + number_text(options.clip_norm) + ")");
  if (r.has("noise_multiplier")) {
    double z = 0;
    r.read("noise_multiplier", &z);
    r.check(z >= 0 && std::isfinite(z), "noise_multiplier",
            "must be >= 0 (got " + number_text(z) + ")");
    options.noise_multiplier = z;
  }
  r.read("delta", &options.delta);
  r.check(options.delta > 0 && options.delta < 1, "delta",
          "must be in (0, 1) (got " + number_text(options.delta) + ")");
  if (r.has("target_epsilon")) {
    double eps = 0;
    r.read("target_epsilon", &eps);
    r.check(eps > 0, "target_epsilon", "must be > 0 (got " + number_text(eps) + ")");
    options.target_epsilon = eps;
  }
  r.read("population", &options.population);
  r.check(options.population >= 0, "population",
          "must be >= 0 (0 = config.data.clients; got " + std::to_string(options.population) + ")");
  if (r.has("adaptive_clipping")) {
    options.adaptive = true;
    JsonReader a = r.child("adaptive_clipping");
    a.read("target_quantile", &options.target_quantile);
    a.check(options.target_quantile > 0 && options.target_quantile < 1, "target_quantile",
            "must be in (0, 1) (got " + number_text(options.target_quantile) + ")");
    a.read("learning_rate", &options.clip_learning_rate);
    a.check(options.clip_learning_rate > 0, "learning_rate",
            "must be > 0 (got " + number_text(options.clip_learning_rate) + ")");
    a.read("count_noise_multiplier", &options.count_noise_multiplier);
    a.check(options.count_noise_multiplier > 0, "count_noise_multiplier",
            "must be > 0 (got " + number_text(options.count_noise_multiplier) + ")");
    r.absorb(a.finish());
  }
  FEDTAIL_RETURN_IF_ERROR(r.finish());
  if (!options.noise_multiplier && !options.target_epsilon) {
    return Status::InvalidArgument(
        "config.privacy: give noise_multiplier, or target_epsilon (the noise is then calibrated "
        "to the run's rounds)");
  }
  return options;
}

}  // namespace fedtail::coordinator
