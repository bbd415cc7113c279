// fedtail-bench's "round" section: where a simulated round's time goes, measured on whole
// processes.
//
// Runs the real fedtail-sim (beside fedtail-bench) on a fixed small federation — by default
// Fashion-MNIST-LT (imbalance 100, Dirichlet 0.5), 40 clients, ResNet-8, 20% of the clients per
// round, 1 local epoch at batch 8, federated evaluation of every client and server evaluation
// after every round; --round-config FILE runs another simulation config (its first strategy and
// seed) — for `rounds` rounds (--rounds, default 5, 2 with --quick), twice: with glibc's default
// malloc settings (FEDTAIL_MALLOC_KEEP_MB=0) and with fedtail's (common/base/malloc_tuning.h).
//
// For each it reports, per round: seconds and their split by phase (training, client evaluation,
// server evaluation, uploads, aggregation, other; from summary.json's seconds_per_round), the
// CPU seconds of the whole process tree (user and sys, getrusage RUSAGE_CHILDREN) and its minor
// and major page faults. Rows per phase: images per round, images/s (phase wall), and the
// standalone images/s of the same model, batch and threads measured in the same run
// (tools/bench/throughput.h), times the number of processes that share the phase (workers for
// training and client evaluation, one for server evaluation); their ratio is the efficiency.
// Training also gets the compute efficiency: images / the clients' summed compute seconds
// against one worker's standalone rate (overhead inside a task, without scheduling).
// Summary: seconds_per_round (tuned), seconds_per_round_untuned, speedup,
// efficiency_<phase>, and minor_faults_per_round[_untuned].
#ifndef FEDTAIL_TOOLS_BENCH_ROUND_SECTION_H_
#define FEDTAIL_TOOLS_BENCH_ROUND_SECTION_H_

#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "tools/bench/bench_context.h"

namespace fedtail::bench {

// Errors: kNotFound when fedtail-sim is not beside fedtail-bench; kInvalidArgument for an
// unreadable --round-config; kInternal with the log's tail when a simulation fails.
Result<nlohmann::json> run_round(const BenchContext& ctx);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_ROUND_SECTION_H_
