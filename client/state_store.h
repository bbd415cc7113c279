// StateStore: the persistent per-client state (strategies::ClientState) of the clients a process
// hosts, one file per client: <dir>/<client-id>.state, a bundle file (common/wire/bundle_file.h)
// written atomically after every completed task, so that the state survives client restarts and
// crashes.
//
// Besides the state itself, a record keeps the state the last task started from and that task's
// (run, round, kind). When the same (round, kind) arrives again — a coordinator resumed from its
// last checkpoint re-runs the round, or a client crashed after training but before its upload was
// acknowledged — the task starts again from that earlier state, so that the repeated task computes
// the same result. A record of another run is ignored (the client starts from an empty state).
//
// File layout: tensors "current/<name>" and "previous/<name>"; metadata
//   {"format": "fedtail-client-state", "version": 1, "run_id", "client_id", "round", "kind",
//    "values": {...}, "previous_values": {...}}.
//
// With an empty directory the records live in memory only (lost when the process exits).
// Thread-safe: calls are serialised by an internal mutex.
#ifndef FEDTAIL_CLIENT_STATE_STORE_H_
#define FEDTAIL_CLIENT_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "common/base/status.h"
#include "strategies/strategy.h"

namespace fedtail::client {

// What one client's state file holds.
struct StateRecord {
  std::string run_id;
  std::string client_id;
  int64_t round = 0;                 // round of the task that produced `current` (0: none yet)
  int kind = 0;                      // its fedtail.v1.TaskKind number (2 fit, 3 evaluate)
  strategies::ClientState current;   // the state after that task
  strategies::ClientState previous;  // the state that task started from
};

// Writes `record` to `path` atomically (write_bundle_file). kIOError naming the path on failure.
Status write_state_file(const std::string& path, const StateRecord& record);

// Reads a state file. kNotFound when `path` does not exist; kCorruption naming the path when it is
// not a well-formed state file (bad bundle, wrong format tag or version, missing fields).
Result<StateRecord> read_state_file(const std::string& path);

class StateStore {
 public:
  // `dir` "" keeps records in memory only. The directory is created (mode 0700) on the first write.
  explicit StateStore(std::string dir);

  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // The state task (run_id, round, kind) of `client_id` starts from: empty when there is no record
  // or the record is of another run; the record's `previous` state when the record was produced by
  // this very (round, kind); its `current` state otherwise. Errors of read_state_file (kCorruption,
  // kIOError), naming the file; the caller decides whether to go on with an empty state.
  Result<strategies::ClientState> load(const std::string& client_id, const std::string& run_id,
                                       int64_t round, int kind);

  // Records that task (run_id, round, kind) of `client_id` started from `before` and ended with
  // `after`, and writes the record (atomically). Skips the write when both states and the stored
  // record are empty. kIOError naming the file when it cannot be written.
  Status save(const std::string& client_id, const std::string& run_id, int64_t round, int kind,
              const strategies::ClientState& before, const strategies::ClientState& after);

  // Moves an unreadable state file aside to "<file>.corrupt" (so that a restart does not trip on
  // it again) and forgets the client's record. Returns the new path, or kIOError.
  Result<std::string> quarantine(const std::string& client_id);

  // "<dir>/<client_id>.state" ("" in memory mode).
  std::string path_for(const std::string& client_id) const;
  const std::string& dir() const { return dir_; }
  bool in_memory() const { return dir_.empty(); }

 private:
  Result<StateRecord> read_record(const std::string& client_id);

  // Constant after construction.
  const std::string dir_;

  std::mutex mu_;
  std::map<std::string, StateRecord> memory_;  // guarded by mu_; in-memory mode only
  std::set<std::string> known_empty_;          // guarded by mu_: no state worth a file
};

// True when `state` has no tensors and no values.
bool state_is_empty(const strategies::ClientState& state);

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_STATE_STORE_H_
