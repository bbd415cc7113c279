// The LiveStatus probe of a running coordinator: what the round engine and the client registry
// report now, as a LiveProbe (coordinator/live_status.h). The Coordinator installs it with
// LiveStatus::set_probe at start() and removes it (clear_probe / end_run) before the engine and the
// registry go away.
#ifndef FEDTAIL_COORDINATOR_LIVE_FEED_H_
#define FEDTAIL_COORDINATOR_LIVE_FEED_H_

#include "coordinator/client_registry.h"
#include "coordinator/live_status.h"
#include "coordinator/round_engine.h"

namespace fedtail::coordinator {

// The engine's round and open phase, the registry's live clients and sessions, and the engine's
// refusal counters. Thread-safe (both are); `engine` and `registry` are only read, during the call.
LiveProbe probe_live_state(RoundEngine& engine, const ClientRegistry& registry);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_LIVE_FEED_H_
