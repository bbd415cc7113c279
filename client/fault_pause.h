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

// Test hook for secure aggregation's dropout tests (tests/integration/secagg_federation_test.cc):
//
//   FEDTAIL_FAULT_EXIT=<stage>:<round>
//
// makes fedtail-client exit at once (status 3, "fault injection: exiting at <stage> of round
// <round>" logged) at that point of that round, as a client that drops out mid-protocol:
// advertise, share, receive, unmask: right after it has pushed its answer to that secagg stage;
// train: when its fit task arrives, before training; fit: right after it has pushed its fit
// result (with secagg, the masked upload). Unset: no effect.
void TEST_fault_exit(const char* stage, uint64_t round);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_FAULT_PAUSE_H_
