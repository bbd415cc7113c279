// ClientRegistry: the coordinator's table of connected sessions and the (virtual) clients each one
// hosts.
//
// A session is what one successful Join creates: a random session token (32 bytes from OpenSSL's
// RAND_bytes, hex; a credential, so not derived from the run seed) that every later call presents,
// the clients it hosts (one for an ordinary client, many for a simulation worker), and the time of
// its last call. A session is
//   - live while it calls at least every `client_timeout` (polls, heartbeats and pushes all count);
//   - stale when it has been silent for longer, or when the transport reported it gone (its
//     long-poll was cancelled: the process died or the connection broke) and it has not called
//     since. A stale session's clients may be taken over at once by a new Join, so that a crashed
//     client rejoins without waiting; stale sessions are not offered to strategies;
//   - expired (removed by expire()) once silent for longer than `client_timeout`.
// A Join naming a client that a live session hosts is refused (already connected).
//
// The registry is a passive table: it calls nobody. The service and the round engine act on what
// its methods return (e.g. fail the tasks of expired clients). Thread-safe: every method locks an
// internal mutex.
#ifndef FEDTAIL_COORDINATOR_CLIENT_REGISTRY_H_
#define FEDTAIL_COORDINATOR_CLIENT_REGISTRY_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "strategies/strategy.h"

namespace fedtail::coordinator {

using SteadyClock = std::chrono::steady_clock;
// Returns the current time; injectable for tests.
using ClockFn = std::function<SteadyClock::time_point()>;

// One client a session announces at Join.
struct ClientRecord {
  std::string id;
  int64_t num_examples = 0;
  std::string model_family;
};

// A session as the service and the engine see it: a copy, valid after the registry changes.
struct SessionView {
  std::string token;
  std::string name;                     // the Join's identity (client id or worker name), for logs
  std::vector<std::string> client_ids;  // the clients it hosts, sorted
  std::vector<int64_t> num_examples;    // what each declared at Join, in client_ids' order
  bool serves(const std::string& client_id) const;
  // What `client_id` declared at Join; 0 when the session does not host it.
  int64_t declared_examples(const std::string& client_id) const;
};

// The outcome of admit().
struct Admission {
  Status status;                   // OK, or why the Join is refused
  bool already_connected = false;  // refused because a live session hosts one of the ids
  std::string session_token;       // on success
  // Client ids whose stale sessions this Join replaced (the engine re-offers their tasks).
  std::vector<std::string> taken_over;
};

// A session removed by leave() or expire().
struct RemovedSession {
  std::string token;
  std::string name;
  std::vector<std::string> client_ids;
};

class ClientRegistry {
 public:
  // `client_timeout`: silence after which a session is stale and then expired. `clock`: the time
  // source (default: steady_clock::now).
  explicit ClientRegistry(std::chrono::milliseconds client_timeout, ClockFn clock = {});

  ClientRegistry(const ClientRegistry&) = delete;
  ClientRegistry& operator=(const ClientRegistry&) = delete;

  // Registers a new session named `name` hosting `clients` (non-empty, distinct non-empty ids).
  // Refused with already_connected = true (status kFailedPrecondition, naming the client and when
  // its session expires) when a live session hosts one of the ids; kInvalidArgument for an empty
  // list, an empty id or a repeated id; kResourceExhausted when the registry would then hold more
  // than `max_clients` clients (counting those of stale sessions this Join does not take over).
  // Clients of stale sessions move to the new session (a stale session left with no client is
  // removed).
  Admission admit(const std::string& name, const std::vector<ClientRecord>& clients,
                  int max_clients = std::numeric_limits<int>::max());
  // Clients registered now (of live and stale sessions).
  int client_count() const;
  // Records the example counts a session's clients declare after Join (PullTaskRequest.declared):
  // a client that declared 0 takes the count; the same count again is accepted; another count is
  // kInvalidArgument (a declaration is final), as is a client the session does not host or a count
  // outside [0, max_examples]. kNotFound for an unknown token. Nothing changes on error.
  Status declare(const std::string& token, const std::vector<ClientRecord>& counts,
                 int64_t max_examples);
  // The token of the session hosting `client_id` ("" when none does).
  std::string session_of(const std::string& client_id) const;

  // The session presenting `token`, which is marked as seen now (and no longer disconnected).
  // nullopt when the token is unknown (never issued, left, expired or taken over).
  std::optional<SessionView> authenticate(const std::string& token);

  // Marks the session as seen now without returning it. False for an unknown token.
  bool touch(const std::string& token);

  // Records that the transport lost the session's long-poll: the session is stale until it calls
  // again. No effect for an unknown token.
  void mark_disconnected(const std::string& token);

  // Removes the session (a clean Leave). nullopt for an unknown token.
  std::optional<RemovedSession> leave(const std::string& token);

  // Removes every session silent for longer than the client timeout and returns them.
  std::vector<RemovedSession> expire();

  // When the next session would expire if nobody called (nullopt when there is no session).
  std::optional<SteadyClock::time_point> next_expiry() const;

  // The clients of live sessions, sorted by id: what strategies choose from.
  std::vector<strategies::ClientInfo> available_clients() const;
  // Their number.
  int available_count() const;
  // The tokens of live sessions, for the end-of-run SHUTDOWN bookkeeping.
  std::vector<std::string> live_session_tokens() const;
  int session_count() const;

 private:
  struct Session {
    std::string token;
    std::string name;
    std::map<std::string, ClientRecord> clients;  // by id
    SteadyClock::time_point last_seen;
    bool disconnected = false;
  };

  bool live_locked(const Session& session, SteadyClock::time_point now) const;
  static SessionView view_of(const Session& session);
  static RemovedSession removed_of(const Session& session);

  // Constant after construction.
  const std::chrono::milliseconds client_timeout_;
  const ClockFn clock_;

  mutable std::mutex mu_;
  std::map<std::string, Session> sessions_;    // by token; guarded by mu_
  std::map<std::string, std::string> owners_;  // client id -> session token; guarded by mu_
};

// A fresh session token: 32 random bytes from OpenSSL's RAND_bytes, as 64 hex characters. Aborts
// (FEDTAIL_CHECK) if OpenSSL's generator fails.
std::string random_token(size_t bytes = 32);

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_CLIENT_REGISTRY_H_
