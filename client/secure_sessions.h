// The client side of secure aggregation (common/privacy/secagg.h): one ClientSecAgg per (hosted
// client, round), kept in memory only (its secret keys and Shamir shares never reach the disk),
// and the masking of a fit task's update.
//
// A coordinator drives a round with kSecAgg tasks (advertise, share, receive, unmask) and one fit
// task whose config carries {"secagg": {"stage": "mask", "neighbours", "weight", "clip", "bits",
// ["clip_norm", "noise_stddev"]}}. A session is dropped when its client starts a newer round or
// after unmask; a client restarted mid-round has lost its keys and fails that round's later
// stages (the coordinator recovers it as a dropout).
//
// Thread-compatible (the client loop's thread).
#ifndef FEDTAIL_CLIENT_SECURE_SESSIONS_H_
#define FEDTAIL_CLIENT_SECURE_SESSIONS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "common/base/status.h"
#include "common/privacy/secagg.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::client {

class SecureSessions {
 public:
  // Runs stage request["stage"] (advertise, share, receive, unmask) of `client`'s round `round`
  // and returns its reply. kInvalidArgument for an unknown stage or a malformed request;
  // kFailedPrecondition for a stage of a round this process holds no session of (restarted) or
  // out of order.
  Result<nlohmann::json> run_stage(const std::string& client, uint64_t round,
                                   const nlohmann::json& request);

  // Whether a fit task's config asks for a masked update.
  static bool wants_masked_update(const nlohmann::json& task_config);

  // The masked upload for a fit task: the update's change from `global` (clipped to L2 norm
  // clip_norm and noised with N(0, noise_stddev^2) per value when the request carries them:
  // distributed DP), weighted, quantised and masked (common/privacy/quantize.h). *clamped gets the
  // values clamped to [-clip, clip]. Errors: kInvalidArgument for a malformed request,
  // kFailedPrecondition when the session is missing or out of order.
  Result<TensorBundle> mask_update(const std::string& client, uint64_t round,
                                   const nlohmann::json& request, const TensorBundle& global,
                                   TensorBundle update, int64_t* clamped);

 private:
  Result<privacy::ClientSecAgg*> session(const std::string& client, uint64_t round);

  std::map<std::string, std::pair<uint64_t, std::unique_ptr<privacy::ClientSecAgg>>> sessions_;
};

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_SECURE_SESSIONS_H_
