// Time helpers of the round engine's files (round_engine.cc, round_engine_async.cc): elapsed
// seconds on the steady clock, and a wall-clock deadline as the wire carries it.
#ifndef FEDTAIL_COORDINATOR_ENGINE_TIME_H_
#define FEDTAIL_COORDINATOR_ENGINE_TIME_H_

#include <chrono>
#include <cstdint>

namespace fedtail::coordinator {

// Seconds from `start` to now, on the steady clock.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The Unix time in milliseconds `seconds` from now (Task::deadline_unix_ms).
inline uint64_t unix_ms_after(double seconds) {
  const auto at = std::chrono::system_clock::now() +
                  std::chrono::duration_cast<std::chrono::system_clock::duration>(
                      std::chrono::duration<double>(seconds));
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count());
}

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_ENGINE_TIME_H_
