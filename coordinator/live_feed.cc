#include "coordinator/live_feed.h"

#include <chrono>

namespace fedtail::coordinator {

LiveProbe probe_live_state(RoundEngine& engine, const ClientRegistry& registry) {
  EngineSnapshot snapshot = engine.snapshot();
  LiveProbe probe;
  probe.round = snapshot.round;
  probe.phase = snapshot.phase;
  probe.phase_started_unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(snapshot.phase_since.time_since_epoch())
          .count();
  probe.selected = snapshot.selected;
  probe.received = snapshot.received;
  for (strategies::ClientFailure& failure : snapshot.failures) {
    probe.failures.push_back({std::move(failure.client_id), std::move(failure.reason)});
  }
  probe.clients_connected = registry.available_count();
  probe.sessions = registry.session_count();
  probe.min_available_clients = engine.min_available_clients();
  probe.refusals = engine.refusals().snapshot();
  return probe;
}

}  // namespace fedtail::coordinator
