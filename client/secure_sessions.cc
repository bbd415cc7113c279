#include "client/secure_sessions.h"

#include <cmath>
#include <vector>

#include "common/base/rng.h"
#include "common/privacy/dp_noise.h"
#include "common/privacy/quantize.h"
#include "common/wire/float_elements.h"
#include "strategies/robust_aggregation.h"

namespace fedtail::client {
namespace {

Result<double> number_field(const nlohmann::json& request, const char* key) {
  auto it = request.find(key);
  if (it == request.end() || !it->is_number()) {
    return Status::InvalidArgument(std::string("secagg mask request: \"") + key +
                                   "\" must be a number");
  }
  return it->get<double>();
}

}  // namespace

Result<privacy::ClientSecAgg*> SecureSessions::session(const std::string& client, uint64_t round) {
  auto it = sessions_.find(client);
  if (it == sessions_.end() || it->second.first != round) {
    return Status::FailedPrecondition("secagg: client " + client + " holds no keys of round " +
                                      std::to_string(round) +
                                      " (restarted since the advertise stage?)");
  }
  return it->second.second.get();
}

Result<nlohmann::json> SecureSessions::run_stage(const std::string& client, uint64_t round,
                                                 const nlohmann::json& request) {
  if (!request.is_object() || !request.contains("stage") || !request["stage"].is_string()) {
    return Status::InvalidArgument("secagg: the task's config holds no \"secagg.stage\"");
  }
  const std::string stage = request["stage"].get<std::string>();
  if (stage == privacy::kStageAdvertise) {
    auto fresh = std::make_unique<privacy::ClientSecAgg>(client, round);
    nlohmann::json reply = fresh->advertise();
    sessions_[client] = {round, std::move(fresh)};
    return reply;
  }
  FEDTAIL_ASSIGN_OR_RETURN(privacy::ClientSecAgg * s, session(client, round));
  if (stage == privacy::kStageShare) return s->share(request);
  if (stage == privacy::kStageReceive) return s->receive(request);
  if (stage == privacy::kStageUnmask) {
    Result<nlohmann::json> reply = s->unmask(request);
    sessions_.erase(client);  // done (or refused: a second request is refused too)
    return reply;
  }
  return Status::InvalidArgument("secagg: unknown stage \"" + stage + "\"");
}

bool SecureSessions::wants_masked_update(const nlohmann::json& task_config) {
  return task_config.is_object() && task_config.contains("secagg");
}

Result<TensorBundle> SecureSessions::mask_update(const std::string& client, uint64_t round,
                                                 const nlohmann::json& request,
                                                 const TensorBundle& global, TensorBundle update,
                                                 int64_t* clamped) {
  if (!request.is_object() || request.value("stage", "") != privacy::kStageMask) {
    return Status::InvalidArgument("secagg: a fit task's \"secagg\" must be the mask stage");
  }
  FEDTAIL_ASSIGN_OR_RETURN(privacy::ClientSecAgg * s, session(client, round));
  auto neighbours = request.find("neighbours");
  if (neighbours == request.end() || !neighbours->is_array()) {
    return Status::InvalidArgument("secagg mask request: \"neighbours\" must be an array");
  }
  std::vector<std::string> active;
  for (const auto& id : *neighbours) {
    if (!id.is_string()) {
      return Status::InvalidArgument("secagg mask request: \"neighbours\" must hold strings");
    }
    active.push_back(id.get<std::string>());
  }
  FEDTAIL_ASSIGN_OR_RETURN(double weight, number_field(request, "weight"));
  privacy::QuantizeParams params;
  FEDTAIL_ASSIGN_OR_RETURN(params.clip, number_field(request, "clip"));
  FEDTAIL_ASSIGN_OR_RETURN(double bits, number_field(request, "bits"));
  params.bits = static_cast<int>(bits);
  FEDTAIL_RETURN_IF_ERROR(privacy::check_quantize_params(params, 1));
  if (request.contains("clip_norm")) {
    // Distributed DP: clip the change, then add this client's share of the noise.
    FEDTAIL_ASSIGN_OR_RETURN(double clip_norm, number_field(request, "clip_norm"));
    FEDTAIL_ASSIGN_OR_RETURN(double stddev, number_field(request, "noise_stddev"));
    if (!(clip_norm > 0) || !(stddev >= 0)) {
      return Status::InvalidArgument(
          "secagg mask request: clip_norm must be > 0, noise_stddev >= 0");
    }
    FEDTAIL_RETURN_IF_ERROR(strategies::clip_update(global, &update, clip_norm).status());
    Rng rng = privacy::os_seeded_rng();
    for (NamedTensor& t : update) {
      if (!dtype_is_floating(t.dtype())) continue;
      uint8_t* bytes = t.mutable_bytes();
      for (int64_t i = 0; i < t.numel(); ++i) {
        store_float(t.dtype(), bytes, i, load_float(t.dtype(), bytes, i) + stddev * rng.normal());
      }
    }
  }
  FEDTAIL_ASSIGN_OR_RETURN(std::vector<uint32_t> words,
                           privacy::quantize_update(update, global, weight, params, clamped));
  FEDTAIL_RETURN_IF_ERROR(s->mask(active, words.data(), words.size()));
  return privacy::words_to_bundle(words, global);
}

}  // namespace fedtail::client
