// FederationService: the gRPC face of the coordinator
// (common/wire/proto/fedtail/v1/federation.proto).
//
// Thin handlers: each decodes its request, calls the ClientRegistry / RoundEngine, and encodes the
// answer; fedtail Status values map to gRPC codes through common/wire/grpc_status.h. Every call but
// Join presents a session token (UNAUTHENTICATED when unknown: never issued, left, expired or taken
// over).
//   - Join: protocol version (FAILED_PRECONDITION), identity (below), admission (ALREADY_EXISTS
//     while a live session hosts the id), then the run's config, heartbeat interval and update size
//     limit. Identity: the mTLS certificate's CN when client certificates are required; else a join
//     token checked by the TokenPolicy when a secret is configured (UNAUTHENTICATED naming why: not
//     an ft1 token, another federation, bad signature, expired, revoked);
//     else (loopback plaintext without a secret) the claimed id. With virtual clients, each one's
//     VirtualClient.join_token is checked when there is a secret; under mTLS without a secret
//     virtual clients are refused (PERMISSION_DENIED).
//   - PullTask: a server-streaming reactor that parks (holding no thread) until the engine has a
//     task for the session or the poll time passes, then writes the TaskHeader and the bundle's
//     chunks (1 MiB each) one write at a time; a stream that breaks re-queues the task.
//   - PushResult: a client-streaming reactor that reads the ResultHeader, takes an upload slot
//     (bounded decodes), then feeds the BundleChunks to the engine's decoder.
//   - Heartbeat: refreshes the session; cancel = the task is no longer wanted.
//   - Leave: removes the session; its outstanding tasks fail.
// Every refused call is counted by kind in engine->refusals() (coordinator/refusals.h); the engine
// counts the results it refuses itself. No exception leaves a handler (each catches and answers
// INTERNAL).
//
// Thread-safety: gRPC calls the handlers concurrently; the service holds no mutable state of its
// own.
#ifndef FEDTAIL_COORDINATOR_SERVICE_H_
#define FEDTAIL_COORDINATOR_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "coordinator/client_registry.h"
#include "coordinator/options.h"
#include "coordinator/round_engine.h"
#include "coordinator/token_policy.h"
#include "fedtail/v1/federation.grpc.pb.h"

namespace fedtail::coordinator {

struct ServiceOptions {
  std::string run_id;
  std::string run_config_json;  // sent to every client at Join
  FederationOptions federation;
  bool mutual_tls = false;   // client certificates are required: identity = certificate CN
  std::string token_secret;  // join-token secret; empty: tokens are not checked
  // Checks join tokens (federation, expiry, signature, revocation); required when token_secret is
  // set. Shared with the coordinator; thread-safe.
  std::shared_ptr<TokenPolicy> tokens;
};

class FederationService final : public v1::Federation::CallbackService {
 public:
  // `registry` and `engine` are borrowed and must outlive the service (and the server running it).
  FederationService(ServiceOptions options, ClientRegistry* registry, RoundEngine* engine);

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerWriteReactor<v1::TaskChunk>* PullTask(grpc::CallbackServerContext* context,
                                                    const v1::PullTaskRequest* request) override;
  grpc::ServerReadReactor<v1::ResultChunk>* PushResult(grpc::CallbackServerContext* context,
                                                       v1::PushResultResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;

  ClientRegistry* registry() const { return registry_; }
  RoundEngine* engine() const { return engine_; }

 private:
  grpc::Status join(grpc::CallbackServerContext* context, const v1::JoinRequest& request,
                    v1::JoinResponse* response);

  // Constant after construction.
  const ServiceOptions options_;
  ClientRegistry* const registry_;
  RoundEngine* const engine_;
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_SERVICE_H_
