// The client's main loop: Join, then { PullTask -> run the task -> PushResult }* until the
// coordinator says SHUTDOWN or a stop is requested (SIGTERM/SIGINT).
//
// Every (re-)Join goes through the TaskRunner, which sets the run up from the coordinator's config
// (and sets it up again if the coordinator now runs another run). A task that fails is reported to
// the coordinator and the loop goes on; a result that cannot be delivered before its round's
// deadline is dropped (logged) and the loop goes on. Only a coordinator that stays unreachable past
// the retry timeout, a refused Join, or a run the client cannot set up end the loop with an error.
#ifndef FEDTAIL_CLIENT_CLIENT_LOOP_H_
#define FEDTAIL_CLIENT_CLIENT_LOOP_H_

#include "client/connection.h"
#include "client/task_runner.h"
#include "common/base/status.h"

namespace fedtail::client {

enum class LoopEnd {
  kShutdown,  // the coordinator ended the run; the client has left
  kStopped,  // stop was requested (the current task, if any, is abandoned); the client has not left
};

// Runs the loop on the calling thread. `connection` and `runner` are borrowed for the call; stop it
// from another thread with connection.request_stop() + runner.request_stop().
Result<LoopEnd> run_client_loop(Connection& connection, TaskRunner& runner);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_CLIENT_LOOP_H_
