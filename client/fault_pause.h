// Test hook for the integration tests (tests/integration/client_faults_test.cc), not a feature:
//
//   FEDTAIL_FAULT_PAUSE=<point>:<round>[:<seconds>]
//
// makes fedtail-client stop once, at one point of the FIT task of round <round>, log
// "fault injection: pausing <where> of round <round> for <seconds> s" and sleep there (default 600
// s), so that a test can kill (SIGKILL), freeze (SIGSTOP) or cut off the client in that exact
// window. Points:
//   download: the task's header and its bundle's header chunk have been read, its data chunks not
//             yet (Connection::pull_task; the task stream stays open);
//   train:    on the worker thread, before local training; heartbeats go on meanwhile, so the
//             client looks slow, not gone;
//   upload:   the result header and the bundle's header chunk have been written, its data chunks
//             not yet (Connection::push_result: a partial upload is on the wire).
// The pause happens at most once per process and ends early when a stop is requested (SIGTERM).
// Unset (the normal case): no effect. A malformed value is logged once as an error and ignored.
#ifndef FEDTAIL_CLIENT_FAULT_PAUSE_H_
#define FEDTAIL_CLIENT_FAULT_PAUSE_H_

#include <cstdint>
#include <functional>

namespace fedtail::client {

enum class FaultPoint { kDownload, kTrain, kUpload };

// Pauses as described above when FEDTAIL_FAULT_PAUSE names `point` and `round` (rounds from 1) and
// no pause has happened yet; returns at once otherwise. Blocks the calling thread for the pause;
// `stopping`, when given, is polled every 100 ms and ends the pause when it returns true.
// Thread-safe.
void TEST_fault_pause(FaultPoint point, uint64_t round, const std::function<bool()>& stopping = {});

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_FAULT_PAUSE_H_
