// fedtail-bench's federation sections. Each returns a section object {"rows": [...], <summary
// keys>} (see tools/fedtail_bench.cc), or the first error.
//
//   "transport": a TensorBundle of 1 MB and 100 MB (and 1 GB without --quick) sent through the real
//     PushResult path, client -> coordinator service on loopback (LoopbackFederation: chunking,
//     payload digest, decoding, finite check; the strategy only counts the update), and the same
//     bundle down through PullTask; MB/s (10^6 bytes) against a memcpy of the same bytes in the
//     same run. Each size runs twice: buffer cache off (every bundle decoded into freshly faulted
//     memory), then on (the default, common/base/buffer_pool.h); the first transfer of each is a
//     warm-up, left out of the mean and reported as seconds_first. Summary:
//     mb_per_s_<1mb|100mb|1gb> (upload), mb_per_s_<size>_down, the same with _cache_off,
//     memcpy_mb_per_s_100mb.
//   "coordinator": (1) the coordinator's overhead per client per round: the in-process service
//     with 10, 50 and 1000 clients (200 with --quick; one connection and thread each) that answer
//     every task at once with a tiny model (25,000 floats), FedAvg's weighted average included; a
//     round's wall time (configure_fit to the end of aggregation) / clients. The bench clients
//     share the machine, so this is an upper bound. (2) the peak RSS (VmHWM, MB = 10^6 bytes) of a
//     real fedtail-coordinator process while one fedtail-client process hosts the clients: 1000
//     (--quick: 200) clients of the small CNN for 2 rounds, and 10 or 50 clients sending ResNet-18
//     updates (~45 MB each; one SGD step of local training) on the Fashion-MNIST data set:
//     10 × 1 round, 10 × 5 and 50 × 1 (the last two fold the same number of uploads). Summary:
//     overhead_ms_per_client and overhead_clients (the largest count),
//     overhead_ms_per_client_<n>_clients, peak_rss_mb and peak_rss_clients (the CNN with 1000
//     clients), peak_rss_mb_resnet18_10_clients (10 × 5), peak_rss_mb_resnet18_50_clients,
//     peak_rss_mb_resnet18_10_clients_1_round.
#ifndef FEDTAIL_TOOLS_BENCH_NETWORK_SECTIONS_H_
#define FEDTAIL_TOOLS_BENCH_NETWORK_SECTIONS_H_

#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "tools/bench/bench_context.h"

namespace fedtail::bench {

// Errors: those of the loopback federation and clients (naming the step).
Result<nlohmann::json> run_transport(const BenchContext& ctx);

// Errors: as run_transport; kInternal with the log's tail when a coordinator or client process
// fails. When fedtail-coordinator / fedtail-client are not beside fedtail-bench or Fashion-MNIST is
// not installed, the peak RSS rows are left out and "peak_rss_skipped" says why.
Result<nlohmann::json> run_coordinator(const BenchContext& ctx);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_NETWORK_SECTIONS_H_
