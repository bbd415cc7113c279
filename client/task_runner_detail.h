// Helpers shared by TaskRunner's two source files (task_preparation.cc: setting the hosted clients
// up; task_runner.cc: running their tasks). Internal to TaskRunner: not for other callers.
#ifndef FEDTAIL_CLIENT_TASK_RUNNER_DETAIL_H_
#define FEDTAIL_CLIENT_TASK_RUNNER_DETAIL_H_

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

namespace fedtail::client::detail {

// Seconds elapsed on the steady clock since `start` (for the "(1.2 s)" of log lines and a task's
// compute time).
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// `j` as compact JSON text for the wire (JoinRequest.properties_json, ResultHeader.metrics_json);
// invalid UTF-8 is replaced rather than thrown on.
inline std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace fedtail::client::detail

#endif  // FEDTAIL_CLIENT_TASK_RUNNER_DETAIL_H_
