#include "tools/bench/secagg_section.h"

#include <spdlog/spdlog.h>
#include <time.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/base/rng.h"
#include "common/privacy/quantize.h"
#include "common/privacy/secagg.h"
#include "common/wire/tensor_bundle.h"
#include "strategies/weighted_average.h"

namespace fedtail::bench {
namespace {

constexpr int64_t kModelValues = 1'000'000;
constexpr double kMB = 1e6;

// CPU seconds of the calling thread.
double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// A bundle of one float32 tensor of kModelValues N(0, 0.05) values (+ `shift`).
Result<TensorBundle> model_bundle(uint64_t seed, double scale) {
  Rng rng = Rng::derive(seed, "bench.secagg_model");
  TensorBundle b;
  FEDTAIL_ASSIGN_OR_RETURN(NamedTensor * t, b.add_zeros("weight", DType::kFloat32, {kModelValues}));
  float* w = t->data<float>();
  for (int64_t i = 0; i < kModelValues; ++i) w[i] = static_cast<float>(rng.normal() * scale);
  return b;
}

// Adds the bytes of a message both ways to *bytes.
void count(const nlohmann::json& message, double* bytes) {
  *bytes += static_cast<double>(message.dump().size());
}

struct SecAggResult {
  double client_cpu_s = 0;   // summed over clients
  double server_s = 0;       // the coordinator's CPU time
  double message_bytes = 0;  // key-exchange bytes, both ways, summed over clients
  int neighbours = 0;
};

// One secure round of `n` clients, `dropped` of which leave after the receive stage.
Result<SecAggResult> secure_round(int n, int dropped, const TensorBundle& base,
                                  const TensorBundle& update) {
  SecAggResult result;
  privacy::SecAggParams params;  // the defaults: 16 neighbours, t = half, 30% dropout guard
  privacy::QuantizeParams quantize;
  privacy::ServerSecAgg server(params, 1, Rng::derive(1, "bench.secagg"));
  std::vector<std::string> ids;
  std::map<std::string, std::unique_ptr<privacy::ClientSecAgg>> clients;
  for (int i = 0; i < n; ++i) {
    char id[32];
    std::snprintf(id, sizeof(id), "client-%04d", i);
    ids.push_back(id);
    clients[id] = std::make_unique<privacy::ClientSecAgg>(id, 1);
  }
  double t = 0;
  // 1. advertise
  std::map<std::string, nlohmann::json> replies;
  for (const std::string& id : ids) {
    t = thread_cpu_s();
    replies[id] = clients[id]->advertise();
    result.client_cpu_s += thread_cpu_s() - t;
    count(replies[id], &result.message_bytes);
  }
  t = thread_cpu_s();
  FEDTAIL_RETURN_IF_ERROR(server.on_advertised(replies).status());
  result.server_s += thread_cpu_s() - t;
  // 2. share
  replies.clear();
  for (const std::string& id : ids) {
    t = thread_cpu_s();
    nlohmann::json request = server.share_request(id);
    result.server_s += thread_cpu_s() - t;
    count(request, &result.message_bytes);
    t = thread_cpu_s();
    FEDTAIL_ASSIGN_OR_RETURN(replies[id], clients[id]->share(request));
    result.client_cpu_s += thread_cpu_s() - t;
    count(replies[id], &result.message_bytes);
  }
  t = thread_cpu_s();
  FEDTAIL_RETURN_IF_ERROR(server.on_shared(replies).status());
  result.server_s += thread_cpu_s() - t;
  result.neighbours = static_cast<int>(server.neighbours(ids.front()).size());
  // 3. receive
  replies.clear();
  for (const std::string& id : ids) {
    t = thread_cpu_s();
    nlohmann::json request = server.receive_request(id);
    result.server_s += thread_cpu_s() - t;
    count(request, &result.message_bytes);
    t = thread_cpu_s();
    FEDTAIL_ASSIGN_OR_RETURN(replies[id], clients[id]->receive(request));
    result.client_cpu_s += thread_cpu_s() - t;
    count(replies[id], &result.message_bytes);
  }
  t = thread_cpu_s();
  FEDTAIL_RETURN_IF_ERROR(server.on_received(replies).status());
  result.server_s += thread_cpu_s() - t;
  // 4. mask: all but the last `dropped` send their masked input; the sum is kept as it grows.
  std::vector<uint32_t> sum(static_cast<size_t>(privacy::secure_words(base)), 0);
  std::set<std::string> survivors;
  for (int i = 0; i < n - dropped; ++i) {
    const std::string& id = ids[static_cast<size_t>(i)];
    t = thread_cpu_s();
    FEDTAIL_ASSIGN_OR_RETURN(std::vector<uint32_t> words,
                             privacy::quantize_update(update, base, 1.0, quantize, nullptr));
    FEDTAIL_RETURN_IF_ERROR(
        clients[id]->mask(server.active_neighbours(id), words.data(), words.size()));
    FEDTAIL_ASSIGN_OR_RETURN(TensorBundle masked, privacy::words_to_bundle(words, base));
    result.client_cpu_s += thread_cpu_s() - t;
    t = thread_cpu_s();
    FEDTAIL_RETURN_IF_ERROR(privacy::add_words(masked, sum.data(), sum.size()));
    result.server_s += thread_cpu_s() - t;
    survivors.insert(id);
  }
  t = thread_cpu_s();
  FEDTAIL_RETURN_IF_ERROR(server.on_masked(survivors));
  result.server_s += thread_cpu_s() - t;
  // 5. unmask
  replies.clear();
  for (const std::string& id : survivors) {
    t = thread_cpu_s();
    nlohmann::json request = server.unmask_request(id);
    result.server_s += thread_cpu_s() - t;
    count(request, &result.message_bytes);
    t = thread_cpu_s();
    FEDTAIL_ASSIGN_OR_RETURN(replies[id], clients[id]->unmask(request));
    result.client_cpu_s += thread_cpu_s() - t;
    count(replies[id], &result.message_bytes);
  }
  t = thread_cpu_s();
  std::map<std::string, std::string> bad;
  FEDTAIL_RETURN_IF_ERROR(server.unmask(replies, sum.data(), sum.size(), &bad));
  FEDTAIL_ASSIGN_OR_RETURN(
      TensorBundle mean,
      privacy::dequantize_mean(sum.data(), sum.size(), static_cast<int64_t>(survivors.size()),
                               static_cast<double>(survivors.size()), base, quantize));
  result.server_s += thread_cpu_s() - t;
  // The unmasked mean is the update (every survivor sent the same one), within quantisation.
  const float* got = mean.at(0).data<float>();
  const float* want = update.at(0).data<float>();
  for (int64_t i = 0; i < kModelValues; i += 9973) {
    if (std::abs(got[i] - want[i]) > 1e-4) {
      return Status::Internal("secagg bench: the unmasked mean differs from the inputs at " +
                              std::to_string(i));
    }
  }
  return result;
}

// FedAvg's coordinator time for `n` updates: the streaming weighted average.
Result<double> fedavg_round(int n, const TensorBundle& update) {
  FEDTAIL_ASSIGN_OR_RETURN(
      strategies::WeightedAverage average,
      strategies::WeightedAverage::create(std::make_shared<const TensorBundle>(update.clone())));
  const double t = thread_cpu_s();
  for (int i = 0; i < n; ++i) FEDTAIL_RETURN_IF_ERROR(average.add(update, 10 + i));
  FEDTAIL_RETURN_IF_ERROR(average.finish().status());
  return thread_cpu_s() - t;
}

}  // namespace

Result<nlohmann::json> run_secagg(const BenchContext& ctx) {
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle base, model_bundle(1, 0.05));
  FEDTAIL_ASSIGN_OR_RETURN(TensorBundle noise, model_bundle(2, 0.01));
  TensorBundle update = base.clone();
  {
    float* u = update.at(0).data<float>();
    const float* d = noise.at(0).data<float>();
    for (int64_t i = 0; i < kModelValues; ++i) u[i] += d[i];
  }
  const double model_mb = static_cast<double>(base.payload_bytes()) / kMB;
  nlohmann::json section = {{"rows", nlohmann::json::array()}};
  std::vector<int> sizes = {10, 100};
  if (!ctx.quick) sizes.push_back(1000);
  for (int n : sizes) {
    FEDTAIL_ASSIGN_OR_RETURN(double fedavg_s, fedavg_round(n, update));
    section["rows"].push_back({{"protocol", "fedavg"},
                               {"clients", n},
                               {"neighbours", 0},
                               {"client_cpu_ms", 0.0},
                               {"coordinator_s", fedavg_s},
                               {"upload_mb", model_mb},
                               {"download_mb", model_mb},
                               {"overhead_kb", 0.0}});
    section["fedavg_coordinator_s_" + std::to_string(n)] = fedavg_s;
    const std::vector<int> drops = n == 100 ? std::vector<int>{0, 10} : std::vector<int>{0};
    for (int dropped : drops) {
      spdlog::info("secagg bench: {} clients, {} dropping", n, dropped);
      FEDTAIL_ASSIGN_OR_RETURN(SecAggResult r, secure_round(n, dropped, base, update));
      const double per_client_kb = r.message_bytes / n / 1e3;
      nlohmann::json row = {{"protocol", dropped > 0 ? "secagg, 10% drop" : "secagg"},
                            {"clients", n},
                            {"neighbours", r.neighbours},
                            {"client_cpu_ms", r.client_cpu_s / n * 1e3},
                            {"coordinator_s", r.server_s},
                            {"upload_mb", model_mb + per_client_kb / 2e3},
                            {"download_mb", model_mb + per_client_kb / 2e3},
                            {"overhead_kb", per_client_kb}};
      section["rows"].push_back(row);
      if (dropped == 0) {
        const std::string s = std::to_string(n);
        section["client_cpu_ms_" + s] = row["client_cpu_ms"];
        section["coordinator_s_" + s] = r.server_s;
        section["overhead_kb_" + s] = per_client_kb;
      }
    }
  }
  return section;
}

}  // namespace fedtail::bench
