#include "client/client_loop.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace fedtail::client {

Result<LoopEnd> run_client_loop(Connection& connection, TaskRunner& runner) {
  connection.set_join_request(runner.join_request());
  connection.set_join_callback([&connection, &runner](const v1::JoinResponse& response) {
    Status prepared = runner.prepare(response);
    if (!prepared.ok()) {
      // Say so now (e.g. a model that differs from the coordinator's), so the coordinator does
      // not select clients that will never answer.
      Status left = connection.leave("cannot take part: " + prepared.message());
      if (!left.ok()) spdlog::warn("leaving failed ({})", left.message());
      return prepared;
    }
    // From now on (re-)Joins carry the clients' example counts and model family.
    connection.set_join_request(runner.join_request());
    return Status::OK();
  });

  Result<v1::JoinResponse> joined = connection.join();
  if (!joined.ok()) {
    if (connection.stopping()) return LoopEnd::kStopped;
    return joined.status();
  }

  while (true) {
    Result<PulledTask> pulled = connection.pull_task(runner.poll_timeout_ms());
    if (!pulled.ok()) {
      if (connection.stopping()) return LoopEnd::kStopped;
      return pulled.status();
    }
    const v1::TaskHeader& header = pulled->header;
    switch (header.kind()) {
      case v1::TASK_KIND_WAIT:
        continue;
      case v1::TASK_KIND_SHUTDOWN: {
        spdlog::info("the coordinator ended the run; leaving");
        Status left = connection.leave("run finished");
        if (!left.ok()) spdlog::warn("leaving failed ({}); exiting anyway", left.message());
        return LoopEnd::kShutdown;
      }
      case v1::TASK_KIND_FIT:
      case v1::TASK_KIND_EVALUATE:
      case v1::TASK_KIND_SECAGG:
        break;
      default:
        spdlog::warn(
            "the coordinator sent task {} of unknown kind {}; ignoring it (a newer "
            "coordinator?)",
            header.task_id(), static_cast<int>(header.kind()));
        continue;
    }
    const std::string task_id = header.task_id();
    Result<TaskOutcome> outcome = runner.handle(std::move(pulled).value());
    if (outcome.ok()) continue;
    if (connection.stopping()) return LoopEnd::kStopped;
    const Status& error = outcome.status();
    switch (error.code()) {
      case StatusCode::kDeadlineExceeded:
        spdlog::warn("dropping the result of task {}: {}; waiting for the next task", task_id,
                     error.message());
        continue;
      case StatusCode::kFailedPrecondition:
        spdlog::warn("the result of task {} was not delivered: {}; waiting for the next task",
                     task_id, error.message());
        continue;
      default:
        return error;
    }
  }
}

}  // namespace fedtail::client
