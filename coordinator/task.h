// Tasks: what the round engine hands to clients through PullTask, and what a poll is answered with.
#ifndef FEDTAIL_COORDINATOR_TASK_H_
#define FEDTAIL_COORDINATOR_TASK_H_

#include <cstdint>
#include <memory>
#include <string>

#include "common/wire/payload_digest.h"
#include "common/wire/tensor_bundle.h"

namespace fedtail::coordinator {

// kSecAgg: a secure-aggregation stage of a fit round (coordinator/secure_round.h): its request is
// in config_json, its reply in the result's metrics; no bundles either way.
enum class TaskKind { kFit, kEvaluate, kSecAgg };

// "fit" / "evaluate" / "secagg".
const char* task_kind_name(TaskKind kind);

// One client's task for one phase of a round. Immutable once made; shared by the engine and the
// PullTask streams that send it.
struct Task {
  std::string id;  // unique in the run (and across restarts of the coordinator)
  TaskKind kind = TaskKind::kFit;
  int round = 0;            // rounds count from 1
  std::string strategy;     // the strategy's registered name
  std::string client_id;    // the (virtual) client it is for
  std::string config_json;  // the strategy's instructions for this client (a JSON object)
  std::shared_ptr<const TensorBundle> bundle;   // never null (an empty bundle when none)
  std::shared_ptr<const PayloadDigest> digest;  // payload_digest(*bundle), computed once per bundle
  uint64_t deadline_unix_ms = 0;                // wall clock: results after this are late
  // What the result's bundle must hold (TaskSpec::expected_update); null = any tensors within
  // federation.max_update_bytes.
  std::shared_ptr<const TensorBundle> expected_update;
};

// The answer to one PullTask.
struct PollAnswer {
  enum class Kind { kTask, kWait, kShutdown };
  Kind kind = Kind::kWait;
  std::shared_ptr<const Task> task;  // set for kTask
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_TASK_H_
