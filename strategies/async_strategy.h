// AsyncStrategy: the interface of an asynchronous strategy (FedBuff). A ServerStrategy that also
// implements it is run by the coordinator's engine in server steps instead of rounds
// (coordinator/round_engine.h, "Asynchronous runs"):
//   - up to max_concurrency fit tasks are in flight at once, each on the global model of the
//     moment it was handed out (its version);
//   - each arriving update is checked for staleness (the versions applied since its task was handed
//     out); one older than max_staleness is refused and counted, the others are buffered;
//   - once buffer_size updates are buffered, apply_buffer makes the next global model (one server
//     step, version + 1): a metrics line, a checkpoint, and, every eval.every steps, server-side
//     evaluation. config "rounds" counts server steps.
// The ServerStrategy half keeps its meaning: initialize/resume, configure_evaluate and
// aggregate_evaluate (federated evaluation, after the last step), evaluate, global_bundle and
// save_state/load_state (which include the version). configure_fit and begin_aggregation are not
// called by the asynchronous engine.
//
// Threading: as ServerStrategy, one thread at a time (the engine thread).
#ifndef FEDTAIL_STRATEGIES_ASYNC_STRATEGY_H_
#define FEDTAIL_STRATEGIES_ASYNC_STRATEGY_H_

#include <cstdint>
#include <nlohmann/json.hpp>

#include "common/base/rng.h"
#include "common/base/status.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/strategy.h"

namespace fedtail::strategies {

struct AsyncOptions {
  int buffer_size = 10;      // K: updates per server step (>= 1)
  int max_concurrency = 20;  // fit tasks in flight at once (>= 1)
  int max_staleness = 10;    // updates staler than this are refused (>= 0)
};

class AsyncStrategy {
 public:
  virtual ~AsyncStrategy() = default;

  virtual AsyncOptions async_options() const = 0;

  // The global model's version: 0 after initialize, + 1 per apply_buffer; restored by load_state.
  virtual int64_t version() const = 0;

  // One fit task for `client` on the current global model (bundle, expected_update, config).
  // kFailedPrecondition before initialize/load_state.
  virtual Result<TaskSpec> configure_async_fit(const ClientInfo& client, Rng& rng) = 0;

  // Folds one update into the buffer. `base` is the global bundle its task was handed (version
  // version() - staleness; the engine keeps it alive while the task is in flight), `staleness` is
  // in [0, max_staleness]. A non-OK status refuses the update (bad names/shapes/dtypes,
  // num_examples <= 0), which then has no effect.
  virtual Status buffer_update(ClientUpdate update, const TensorBundle& base, int staleness) = 0;

  // Updates buffered since the last apply_buffer.
  virtual int buffered() const = 0;

  // One server step: makes the next global model from the buffered updates, empties the buffer and
  // bumps the version. Returns the step's training metrics (a JSON object: "updates", "loss",
  // "staleness" {"mean", "max"}, ...). kFailedPrecondition with an empty buffer.
  virtual Result<nlohmann::json> apply_buffer(int step) = 0;
};

}  // namespace fedtail::strategies

#endif  // FEDTAIL_STRATEGIES_ASYNC_STRATEGY_H_
