// Refusals: how many inputs of each kind the coordinator turned away, for metrics.jsonl ("refused"
// in every round's line: the refusals since the previous line) and summary.json (their sum).
//
// Every refusal is also answered with a status that names the problem and logged where it happens;
// this only counts. Kinds are fixed (kRefusalKinds); a snapshot lists every kind, zeros included,
// so that scripts can rely on the keys.
//
// Thread-safe: add() from any thread (gRPC's callback threads), snapshots from any other.
#ifndef FEDTAIL_COORDINATOR_REFUSALS_H_
#define FEDTAIL_COORDINATOR_REFUSALS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/wire/bundle_checks.h"

namespace fedtail::coordinator {

enum class Refusal {
  // Join
  kProtocolVersion,   // a protocol version this coordinator does not speak
  kJoinToken,         // a missing, forged or replayed-for-another-id join token
  kCertificate,       // a client certificate without a common name
  kAlreadyConnected,  // a client id that a live session hosts
  kBadJoin,           // any other refused Join (empty id, virtual clients under mTLS, ...)
  // Any call but Join
  kUnknownSession,  // a session token never issued, ended, expired or taken over
  // PushResult
  kMalformedStream,     // no ResultHeader first, a second header, a stream cut before its header
  kWrongClient,         // a result for a task of another client, or a client the session lacks
  kUnknownTask,         // a task id never handed out (or long expired)
  kDuplicate,           // a result for a task already answered (answered duplicate, not re-counted)
  kLate,                // a result after its round's deadline or phase
  kBadHeader,           // metrics_json not an object, num_examples out of range
  kCorruptBundle,       // chunks that do not decode: truncated, out of order, bad header, ...
  kDigestMismatch,      // payload or header digest does not match the bytes
  kOversized,           // a bundle over federation.max_update_bytes (or decode limits)
  kNonFinite,           // NaN or Inf in an update
  kIncompatibleUpdate,  // names, dtypes or shapes the strategy cannot fold
  kStalledUpload,       // an upload idle past upload_idle_timeout_s or below its rate floor
  // Any call
  kResourceLimit,  // over a cap: max_clients, virtual clients per Join, parked polls per session
  kCount
};

// The JSON key of each kind, in enum order.
inline constexpr std::array<const char*, static_cast<size_t>(Refusal::kCount)> kRefusalKinds = {
    "protocol_version",
    "join_token",
    "certificate",
    "already_connected",
    "bad_join",
    "unknown_session",
    "malformed_stream",
    "wrong_client",
    "unknown_task",
    "duplicate",
    "late",
    "bad_header",
    "corrupt_bundle",
    "digest_mismatch",
    "oversized",
    "non_finite",
    "incompatible_update",
    "stalled_upload",
    "resource_limit"};

// The kind of a refused decode (BundleDecoder / check_finite status).
Refusal classify_bundle_error(const Status& status);

class RefusalCounters {
 public:
  void add(Refusal kind) { counts_[static_cast<size_t>(kind)].fetch_add(1); }
  uint64_t count(Refusal kind) const { return counts_[static_cast<size_t>(kind)].load(); }
  // {"<kind>": count, ..., "total": sum} of everything counted so far.
  nlohmann::json snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Refusal::kCount)> counts_{};
};

// `later` minus `earlier` (two snapshots, `earlier` possibly null), key by key, with "total".
nlohmann::json refusal_delta(const nlohmann::json& later, const nlohmann::json& earlier);

// "kind n, kind n" for the non-zero kinds of a snapshot or delta ("none" when all are zero).
std::string describe_refusals(const nlohmann::json& counts);

// Sums "refused" objects key by key (summary.json totals over a run's metrics lines); lines
// without one are skipped. Always has every kind and "total".
nlohmann::json sum_refusals(const std::vector<nlohmann::json>& lines);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_REFUSALS_H_
