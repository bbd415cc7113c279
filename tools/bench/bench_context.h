// What every fedtail-bench section receives (tools/fedtail_bench.cc).
#ifndef FEDTAIL_TOOLS_BENCH_BENCH_CONTEXT_H_
#define FEDTAIL_TOOLS_BENCH_BENCH_CONTEXT_H_

#include <torch/types.h>

#include <string>
#include <vector>

namespace fedtail::bench {

struct BenchContext {
  bool quick = false;  // --quick: smaller sizes, fewer repetitions
  torch::Device device = torch::kCPU;
  std::vector<int> thread_counts;   // intra-op thread counts to try, e.g. {1, 16}
  std::vector<std::string> models;  // architectures to run; empty = all
  std::string bin_dir;              // where fedtail-bench (and its sibling binaries) live
  std::string round_config;  // --round-config: the "round" section's federation; "" = built-in
  int rounds = 0;            // --rounds: rounds of the "round" section; 0 = its default
};

}  // namespace fedtail::bench

#endif  // FEDTAIL_TOOLS_BENCH_BENCH_CONTEXT_H_
