// Client sampling for a round, and the round options every sampling strategy shares.
//
// Stateless free functions; safe from any thread (each call uses only its arguments).
#ifndef FEDTAIL_STRATEGIES_SAMPLING_H_
#define FEDTAIL_STRATEGIES_SAMPLING_H_

#include <nlohmann/json.hpp>
#include <vector>

#include "common/base/json_reader.h"
#include "common/base/rng.h"
#include "common/base/status.h"
#include "strategies/robust_aggregation.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

// Keys of config.strategy shared by FedAvg-like strategies (Flower's names).
struct RoundOptions {
  // Fraction of the available clients trained each round, in (0, 1]. Default 1 (all).
  double fraction_fit = 1.0;
  // At least this many clients train each round (>= 1); fewer available is kFailedPrecondition,
  // and a round with fewer valid updates keeps the old model. Default 1.
  int min_fit_clients = 1;
  // Fraction of the available clients evaluated after each round, in [0, 1]; 0 = no federated
  // evaluation. Default 1.
  double fraction_evaluate = 1.0;
  // At least this many clients are evaluated (>= 0). Default 0.
  int min_evaluate_clients = 0;
  // false: a round in which any selected client failed keeps the old model. Default true.
  bool accept_failures = true;
  // "robust": defences against hostile clients (strategies/robust_aggregation.h): update-norm
  // clipping, coordinate-wise median, trimmed mean, Krum, Multi-Krum, Bulyan. Honoured by every
  // strategy that averages models (FedAvgServer and its relatives); the prototype strategies
  // (fedproto, fedsa) refuse anything but the default. Default: none.
  RobustOptions robust;
};

// Reads the RoundOptions keys from `reader` (a reader on config.strategy, which may hold other
// keys: the caller reads those and calls finish()). A "name" key (the strategy's name, where
// config.strategy carries it) is accepted and ignored. Errors are recorded in the reader, naming
// the field: "config.strategy.fraction_fit: must be in (0, 1] (got 0)".
void read_round_options(JsonReader& reader, RoundOptions* options);

// The RoundOptions of `config` (config.strategy; null counts as {}), rejecting any other key.
Result<RoundOptions> parse_round_options(const nlohmann::json& config);

// Samples max(floor(fraction · n), min_clients) of the n `available` clients (at most all of them),
// uniformly without replacement with draws from `rng`, and returns them sorted by id. The floor
// allows 1e-9 of slack, so 0.29 · 100 gives 29. kFailedPrecondition when n < min_clients;
// kInvalidArgument when fraction is outside [0, 1] or min_clients < 0. `rng` is advanced only when
// a proper subset is drawn.
Result<std::vector<ClientInfo>> sample_clients(const std::vector<ClientInfo>& available,
                                               double fraction, int min_clients, Rng& rng);

// The number of clients sample_clients picks from n available (before the n < min_clients check).
int64_t sample_size(int64_t n, double fraction, int min_clients);

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_SAMPLING_H_
