#include "strategies/sampling.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace fedtail::strategies {

void read_round_options(JsonReader& reader, RoundOptions* options) {
  reader.ignore("name");  // the strategy's name, when config.strategy carries it
  reader.read("fraction_fit", &options->fraction_fit);
  reader.read("min_fit_clients", &options->min_fit_clients);
  reader.read("fraction_evaluate", &options->fraction_evaluate);
  reader.read("min_evaluate_clients", &options->min_evaluate_clients);
  reader.read("accept_failures", &options->accept_failures);
  if (reader.has("robust")) {
    nlohmann::json robust;
    reader.read_raw("robust", &robust);
    Result<RobustOptions> parsed = parse_robust_options(robust, reader.path() + ".robust");
    if (parsed.ok()) {
      options->robust = *parsed;
    } else {
      reader.absorb(parsed.status());
    }
  }
  reader.check(options->fraction_fit > 0 && options->fraction_fit <= 1, "fraction_fit",
               "must be in (0, 1] (got " + std::to_string(options->fraction_fit) + ")");
  reader.check(options->min_fit_clients >= 1, "min_fit_clients",
               "must be >= 1 (got " + std::to_string(options->min_fit_clients) + ")");
  reader.check(options->fraction_evaluate >= 0 && options->fraction_evaluate <= 1,
               "fraction_evaluate",
               "must be in [0, 1] (got " + std::to_string(options->fraction_evaluate) + ")");
  reader.check(options->min_evaluate_clients >= 0, "min_evaluate_clients",
               "must be >= 0 (got " + std::to_string(options->min_evaluate_clients) + ")");
}

Result<RoundOptions> parse_round_options(const nlohmann::json& config) {
  const nlohmann::json empty = nlohmann::json::object();
  JsonReader reader(config.is_null() ? empty : config, "config.strategy");
  RoundOptions options;
  read_round_options(reader, &options);
  FEDTAIL_RETURN_IF_ERROR(reader.finish());
  return options;
}

int64_t sample_size(int64_t n, double fraction, int min_clients) {
  // The slack absorbs products like 0.29 * 100 = 28.999999999999996.
  const int64_t by_fraction = static_cast<int64_t>(std::floor(fraction * n + 1e-9));
  return std::min<int64_t>(n, std::max<int64_t>(by_fraction, min_clients));
}

Result<std::vector<ClientInfo>> sample_clients(const std::vector<ClientInfo>& available,
                                               double fraction, int min_clients, Rng& rng) {
  if (!(fraction >= 0 && fraction <= 1)) {
    return Status::InvalidArgument("sample_clients: fraction must be in [0, 1] (got " +
                                   std::to_string(fraction) + ")");
  }
  if (min_clients < 0) {
    return Status::InvalidArgument("sample_clients: min_clients must be >= 0 (got " +
                                   std::to_string(min_clients) + ")");
  }
  const int64_t n = static_cast<int64_t>(available.size());
  if (n < min_clients) {
    return Status::FailedPrecondition(std::to_string(n) + " client(s) available, " +
                                      std::to_string(min_clients) + " needed");
  }
  const int64_t k = sample_size(n, fraction, min_clients);
  std::vector<ClientInfo> chosen;
  chosen.reserve(static_cast<size_t>(k));
  if (k == n) {
    chosen = available;
  } else {
    for (int64_t i : rng.sample_without_replacement(n, k)) chosen.push_back(available[i]);
  }
  std::sort(chosen.begin(), chosen.end(),
            [](const ClientInfo& a, const ClientInfo& b) { return a.id < b.id; });
  return chosen;
}

}  // namespace fedtail::strategies
