// LoopbackFederation: the coordinator's service side in-process — RoundEngine, FederationService
// and a gRPC server on 127.0.0.1 (plaintext) — with a benchmark strategy, and BenchClient, a
// client that answers every fit task at once with the bundle it received, through the real
// client::Connection. Together they exercise the real PullTask/PushResult paths (chunked bundles,
// payload digest, decode limits, finite checks, the upload gate) with no training in between, for
// fedtail-bench's "transport" and "coordinator" sections.
//
// The benchmark strategy's global model is `floats` float32 zeros in tensors "w0", "w1", ... of at
// most 2^20 floats (4 MB) each, the scale of a real model's layers. Each round
// every available client gets it; updates are folded with WeightedAverage when `average` is set
// (FedAvg's arithmetic), else only counted (transport figures without the averaging). It records
// when each round was configured and finished.
//
// Threading: start() and wait() from one thread; BenchClient::run on a thread of its own per
// client; round_seconds() after wait().
#ifndef FEDTAIL_TOOLS_BENCH_LOOPBACK_FEDERATION_H_
#define FEDTAIL_TOOLS_BENCH_LOOPBACK_FEDERATION_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/learning/run_config.h"
#include "coordinator/client_registry.h"
#include "coordinator/round_engine.h"
#include "coordinator/service.h"

namespace fedtail::bench {

struct LoopbackOptions {
  int rounds = 1;        // rounds to run (>= 1)
  int clients = 1;       // clients every round waits for and trains (>= 1)
  int64_t floats = 1;    // float32 elements of the model (>= 1)
  bool average = false;  // fold updates with WeightedAverage (else only count them)
  int max_concurrent_uploads = 4;
};

class BenchStrategy;

class LoopbackFederation {
 public:
  // Builds the strategy, engine and service and starts listening on 127.0.0.1 (any free port) and
  // the engine thread. kUnavailable when no port can be bound; kResourceExhausted when the model
  // cannot be allocated.
  static Result<std::unique_ptr<LoopbackFederation>> start(const LoopbackOptions& options);
  // Stops the engine and the server.
  ~LoopbackFederation();
  LoopbackFederation(const LoopbackFederation&) = delete;
  LoopbackFederation& operator=(const LoopbackFederation&) = delete;

  // "127.0.0.1:<port>".
  const std::string& target() const { return target_; }
  // Blocks until every round ran (then waits briefly for the clients to collect their SHUTDOWN)
  // and returns the run's status.
  Status wait();
  // Makes wait() return soon (kUnavailable): a client failed. Thread-safe.
  void stop();
  // Seconds from configure_fit to the end of aggregation, per round (after wait()).
  std::vector<double> round_seconds() const;

 private:
  LoopbackFederation() = default;

  RunConfig run_config_;
  std::unique_ptr<BenchStrategy> strategy_;
  std::unique_ptr<coordinator::ClientRegistry> registry_;
  std::unique_ptr<coordinator::RoundEngine> engine_;
  std::unique_ptr<coordinator::FederationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
};

// Timings of one BenchClient's tasks, in seconds.
struct ClientTimings {
  std::vector<double> pull_seconds;  // PullTask calls that brought a task: call to decoded bundle
  std::vector<double> push_seconds;  // PushResult calls: call to the coordinator's answer
};

// Joins as `client_id`, then answers every fit task with the task's own bundle (num_examples 1)
// until the coordinator says SHUTDOWN. Returns the timings, or the first error (a refused result
// is an error).
Result<ClientTimings> run_bench_client(const std::string& target, const std::string& client_id);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_LOOPBACK_FEDERATION_H_
