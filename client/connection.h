// Connection: a client's link to the coordinator — the gRPC channel and stub, the session, and the
// retry policy (exponential backoff with jitter, re-Join when the coordinator has forgotten the
// session), so that a coordinator restart or a network blip is survived without the caller noticing
// more than a delay.
//
// Retry policy. UNAVAILABLE and DEADLINE_EXCEEDED (and ABORTED, CANCELLED, RESOURCE_EXHAUSTED,
// INTERNAL/UNKNOWN from a broken connection) are retried after Backoff delays; every retry is
// logged as "coordinator unreachable (<what>); retrying in 2.1 s". A session-scoped call answered
// UNAUTHENTICATED or NOT_FOUND (the coordinator restarted and does not know the session) re-Joins,
// then retries. Join answered ALREADY_EXISTS (the id's previous session has not expired yet) is
// retried too. Join answered UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT or
// FAILED_PRECONDITION is final (bad token, bad certificate, protocol version), and so is a session
// call answered FAILED_PRECONDITION, PERMISSION_DENIED, INVALID_ARGUMENT or DATA_LOSS (e.g. a
// result for a task of another client): the caller gets kFailedPrecondition with the reason.
// Retrying gives up once the coordinator has been unreachable for `retry_timeout_s` (kUnavailable).
// While the channel is up and the client holds a session, a refusal "for now" (e.g. UNAVAILABLE "a
// result is already being received") is retried within the coordinator's heartbeat interval at the
// latest, whatever the backoff says: the coordinator expires a session silent for its
// client_timeout_s, and with it the task whose result is being retried.
// request_stop() makes every call, and every backoff sleep, return kUnavailable("stopping")
// promptly.
//
// Every RPC has a client-side deadline: Join and Heartbeat `rpc_timeout_s`, PullTask the poll time
// plus a margin for the task's bundle, PushResult a time proportional to the result's size.
//
// Threading: one thread drives join/pull_task/push_result; heartbeat() may run concurrently from
// another thread; request_stop() may be called from any thread (a signal-handling thread).
#ifndef FEDTAIL_CLIENT_CONNECTION_H_
#define FEDTAIL_CLIENT_CONNECTION_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "client/backoff.h"
#include "common/base/status.h"
#include "common/security/tls.h"
#include "common/wire/tensor_bundle.h"
#include "fedtail/v1/federation.grpc.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace fedtail::client {

// Default of ConnectionOptions::max_bundle_bytes (--max-bundle-bytes): 1 GiB.
constexpr uint64_t kDefaultMaxBundleBytes = uint64_t{1} << 30;

struct ConnectionOptions {
  // The coordinator, "HOST:PORT".
  std::string target;
  // TLS: ca (TLS), + cert + key (mutual TLS). All empty: plaintext, allowed only to a loopback
  // target unless `insecure`.
  TlsFiles tls;
  // Allow plaintext to a non-loopback target.
  bool insecure = false;
  // This connection's identity (the JoinRequest's client_id; under mutual TLS the certificate's CN
  // is the identity). Also seeds the backoff jitter.
  std::string client_id;
  // hex HMAC join token, or "" (mutual TLS, or a coordinator without authentication).
  std::string join_token;
  BackoffOptions backoff;
  // Give up after the coordinator has been unreachable this long, in seconds. 0 = never.
  double retry_timeout_s = 600;
  // Deadline of Join, Heartbeat and Leave, in seconds.
  double rpc_timeout_s = 30;
  // Largest task bundle (payload bytes, the sum of its tensors' sizes) this client accepts
  // (--max-bundle-bytes). A task whose bundle header declares more is refused before anything is
  // allocated for it. Default 1 GiB: the coordinator's own default limit on an update
  // (federation.max_update_bytes), far above any built-in model (a few MiB), and a quarter of the
  // decoder's 4 GiB default, which a hostile coordinator could otherwise make the client allocate.
  uint64_t max_bundle_bytes = kDefaultMaxBundleBytes;
};

// The longest a PullTask long-poll may be held, in ms, whatever the run config asks for
// (config.federation.poll_timeout_ms, up to ~49 days on the wire): a hostile or misconfigured
// coordinator cannot park a client for longer than this per call.
constexpr uint32_t kMaxPollTimeoutMs = 5 * 60 * 1000;

// A task as pulled: its header and its decoded bundle.
struct PulledTask {
  v1::TaskHeader header;
  TensorBundle bundle;
  // Not OK when the task's bundle arrived but was refused (corrupt, too large): the task cannot run
  // and should be answered with ok=false and this error.
  Status bundle_status;
};

class Connection {
 public:
  // Called after every successful Join (the first and each re-Join), on the thread that joined,
  // with the coordinator's answer. A non-OK return aborts the call that joined with that status.
  using JoinCallback = std::function<Status(const v1::JoinResponse&)>;

  // Builds the channel credentials and the stub; does not connect. kFailedPrecondition for a
  // plaintext non-loopback target without `insecure`; TLS file errors (kNotFound naming the file,
  // kInvalidArgument for an incomplete set).
  static Result<std::unique_ptr<Connection>> create(ConnectionOptions options);

  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // What every Join sends besides identity and token: num_examples, model_family, properties_json,
  // virtual_clients. Updated by the caller when it learns them (e.g. after building its data).
  void set_join_request(const v1::JoinRequest& request);
  void set_join_callback(JoinCallback callback);

  // Joins, retrying as described above. Returns the coordinator's answer (also passed to the join
  // callback). kFailedPrecondition when refused, kUnavailable when stopping or after
  // retry_timeout_s of failures.
  Result<v1::JoinResponse> join();

  // One long-poll for a task (blocks up to about `poll_timeout_ms`, clamped to kMaxPollTimeoutMs;
  // the coordinator may answer sooner). Joins first when there is no session; retries and re-Joins
  // as described above. A WAIT answer is returned as such (the caller polls again). A bundle over
  // max_bundle_bytes is not received: the task comes back with bundle_status kResourceExhausted
  // naming --max-bundle-bytes.
  Result<PulledTask> pull_task(uint32_t poll_timeout_ms);

  // Uploads a result: `header` (its session_token is filled in here) then the bundle's chunks (none
  // when !header.ok()).
  // Retried with the same task_id until the coordinator answers, `give_up_unix_ms` passes (0 = no
  // limit; kDeadlineExceeded; the caller bounds it, see TaskRunner) or stop is requested. The
  // coordinator acknowledges a duplicate once. `round` is the task's round, used only by the
  // FEDTAIL_FAULT_PAUSE test hook (fault_pause.h).
  Result<v1::PushResultResponse> push_result(v1::ResultHeader header, const TensorBundle& bundle,
                                             uint64_t give_up_unix_ms, uint64_t round = 0);

  // One heartbeat for `task_id` (no retry: the next heartbeat is the retry). Returns whether the
  // coordinator wants the task cancelled, or the call's error.
  Result<bool> heartbeat(const std::string& task_id, double progress);

  // Tells the coordinator this client leaves (one attempt, short deadline). OK when there is no
  // session.
  Status leave(const std::string& reason);

  // Makes current and future calls return kUnavailable("stopping") promptly (cancels in-flight
  // RPCs and wakes backoff sleeps). Thread-safe; idempotent.
  void request_stop();
  bool stopping() const { return stop_.load(); }

  // The session token of the current session ("" before the first Join).
  std::string session_token() const;
  const ConnectionOptions& options() const { return options_; }

 private:
  Connection(ConnectionOptions options, std::shared_ptr<grpc::Channel> channel);

  // Outcome of one failed RPC attempt.
  enum class Failure { kRetry, kRejoin, kFatal };
  Failure classify(const grpc::Status& status, bool session_call) const;

  // Sleeps the next backoff delay after `what` failed, logging it. kUnavailable when stopping or
  // when the coordinator has been unreachable for retry_timeout_s.
  Status wait_before_retry(const std::string& what, const grpc::Status& status);
  // Resets the backoff and the unreachable-since clock after a successful call.
  void note_success();

  Status join_once(v1::JoinResponse* response, grpc::Status* rpc_status);

  // Registers `context` for cancellation by request_stop(); false when already stopping.
  bool track(grpc::ClientContext* context);
  void untrack(grpc::ClientContext* context);

  // Constant after construction.
  const ConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Federation::Stub> stub_;

  std::atomic<bool> stop_{false};
  std::atomic<bool> joined_once_{false};  // a Join has succeeded (TLS/plaintext hints stop)

  mutable std::mutex mu_;
  std::condition_variable wake_;           // signalled by request_stop()
  std::set<grpc::ClientContext*> active_;  // guarded by mu_
  std::string session_token_;              // guarded by mu_
  v1::JoinRequest join_request_;           // guarded by mu_
  // Set when set_join_request() brings example counts: the next poll declares them (the first
  // Join, made before the run config was known, declared 0). Guarded by mu_.
  bool declare_counts_ = false;
  JoinCallback join_callback_;  // guarded by mu_

  // Used by the driving thread only.
  Backoff backoff_;
  int64_t unreachable_since_ms_ = 0;  // steady-clock ms of the first failure in a row; 0 = none
  // From the last JoinResponse; 0 before the first Join. Written by join(), read by any retrying
  // thread.
  std::atomic<uint32_t> heartbeat_interval_ms_{0};
};

// Milliseconds since the Unix epoch (for task deadlines, which are wall-clock times).
uint64_t unix_now_ms();

}  // namespace fedtail::client

#endif  // FEDTAIL_CLIENT_CONNECTION_H_
