// fedtail-bench's in-memory sections: the coordinator's arithmetic and codec against the memory
// bus, with no network in between. Each returns {"rows": [...], <summary keys>} (see
// tools/fedtail_bench.cc); rates are GB/s (10^9 bytes) of the float32 update bytes processed, and
// every ratio divides by a memcpy of the same bytes measured in the same run, just before.
//
//   "aggregation": WeightedAverage (strategies/weighted_average.h, FedAvg's streaming mean) folding
//     N updates of P floats, then finish() (the new model, in fresh memory); GB/s of the N·P·4
//     update bytes. Three variants: the fold as it was before 2026-11-30 (fresh accumulators every
//     round, one update at a time), accumulators reset and reused (FedAvg from its second round),
//     and reused + groups of fold_group_size() (add_all: FedAvg's fold now; pairs for ResNet-18,
//     fours for the CNN). Sizes: ResNet-18 (11.2 M floats) × 10 updates, and a small CNN-sized
//     model (0.5 M floats) × 100 updates. Summary (ResNet-18): ratio_to_memcpy and gb_per_s
//     (FedAvg's fold), the same with suffixes _one_at_a_time and _before, memcpy_gb_per_s.
//   "serialization": TensorBundle → BundleChunk stream → TensorBundle through BundleEncoder and
//     BundleDecoder (1 MiB chunks, payload digest on both sides: what travels over gRPC, minus
//     the network), for a ResNet-18-shaped bundle (122 tensors, 44.7 MB); and its parts measured
//     alone: encode only, decode only, one digest pass (XXH3-128), and one SHA-256 pass (the
//     digest fedtail used before, for comparison in the same run). Summary: ratio_to_memcpy
//     (round trip), gb_per_s, memcpy_gb_per_s, digest_gb_per_s, sha256_gb_per_s.
// --quick uses smaller sizes and fewer repetitions.
#ifndef FEDTAIL_TOOLS_BENCH_DATA_SECTIONS_H_
#define FEDTAIL_TOOLS_BENCH_DATA_SECTIONS_H_

#include <cstddef>
#include <nlohmann/json.hpp>

#include "common/base/status.h"
#include "tools/bench/bench_context.h"

namespace fedtail::bench {

// Errors: kResourceExhausted when the buffers cannot be allocated; kInternal if the average or
// codec refuses its own input (a bug).
Result<nlohmann::json> run_aggregation(const BenchContext& ctx);
Result<nlohmann::json> run_serialization(const BenchContext& ctx);

// Bytes per second of memcpy between two distinct `bytes`-byte buffers (both touched first), over
// at least 3 copies and `min_seconds`.
double memcpy_bytes_per_s(size_t bytes, double min_seconds);

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_DATA_SECTIONS_H_
