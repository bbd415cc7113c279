// fedtail-bench's "secagg" section: the cost of secure aggregation (SecAgg+,
// common/privacy/secagg.h) beside plain FedAvg, for 10, 100 and 1000 clients (--quick: 10 and
// 100) of a 1 M-parameter model (one float32 tensor of 10^6 values), in one process without the
// network: every client's stages (keys, Shamir shares, AES-GCM, quantisation, masks) and the
// coordinator's (graph, share checks, the masked sum, reconstruction and unmasking) run in turn,
// each timed with its thread's CPU clock.
//
// Rows: {"protocol": "fedavg" | "secagg" | "secagg, 10% drop", "clients", "neighbours",
// "client_cpu_ms": per client, "coordinator_s": the whole round's aggregation, "upload_mb" and
// "download_mb" per client (the update and model bytes; secagg's messages added), "overhead_kb":
// secagg's key-exchange bytes per client beyond the model}. The "10% drop" row (100 clients)
// loses a tenth of them after the receive stage: the coordinator reconstructs their mask keys.
// Summary: client_cpu_ms_<n>, coordinator_s_<n>, fedavg_coordinator_s_<n>, overhead_kb_<n>.
#ifndef FEDTAIL_TOOLS_BENCH_SECAGG_SECTION_H_
#define FEDTAIL_TOOLS_BENCH_SECAGG_SECTION_H_

#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "tools/bench/bench_context.h"

namespace fedtail::bench {

Result<nlohmann::json> run_secagg(const BenchContext& ctx);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_SECAGG_SECTION_H_
