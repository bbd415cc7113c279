#include "coordinator/service.h"

#include <grpc/grpc_security_constants.h>
#include <spdlog/spdlog.h>

#include <exception>
#include <memory>
#include <mutex>
#include <utility>

#include "common/security/tls.h"
#include "common/wire/bundle_codec.h"
#include "common/wire/grpc_status.h"

namespace fedtail::coordinator {
namespace {

grpc::Status unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "unknown session token (the session ended or the coordinator restarted): "
                      "join again");
}

grpc::Status internal_error(const char* where, const std::exception* e) {
  std::string message = std::string(where) + ": unexpected exception";
  if (e != nullptr) message += std::string(": ") + e->what();
  spdlog::error("{}", message);
  return grpc::Status(grpc::StatusCode::INTERNAL, message);
}

v1::TaskKind wire_kind(const PollAnswer& answer) {
  switch (answer.kind) {
    case PollAnswer::Kind::kWait:
      return v1::TASK_KIND_WAIT;
    case PollAnswer::Kind::kShutdown:
      return v1::TASK_KIND_SHUTDOWN;
    case PollAnswer::Kind::kTask:
      break;
  }
  return answer.task->kind == TaskKind::kFit ? v1::TASK_KIND_FIT : v1::TASK_KIND_EVALUATE;
}

// PullTask: parks in the engine until a task (or WAIT/SHUTDOWN) is ready, then writes the header
// and the bundle chunks one write at a time. Deletes itself in OnDone.
class PullReactor final : public grpc::ServerWriteReactor<v1::TaskChunk> {
 public:
  PullReactor(ClientRegistry* registry, RoundEngine* engine, const v1::PullTaskRequest& request)
      : registry_(registry), engine_(engine) {
    try {
      start(request);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      finish_locked(internal_error("PullTask", &e));
    }
  }

  void OnWriteDone(bool ok) override {
    std::string failed_task;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        if (task_) failed_task = task_->id;
        finish_locked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "task stream broken"));
      } else if (encoder_ && encoder_->next(chunk_.mutable_bundle())) {
        StartWrite(&chunk_);
      } else {
        finish_locked(grpc::Status::OK);
      }
    }
    if (!failed_task.empty()) engine_->delivery_failed(failed_task);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    // A parked poll that we take back: the client went away while idle. Otherwise the answer is
    // on its way (on_answer) or being written (OnWriteDone sees the failure).
    if (parked_ && engine_->cancel_pull(parked_id_)) {
      parked_ = false;
      registry_->mark_disconnected(token_);
      finish_locked(grpc::Status::CANCELLED);
    }
  }

  void OnDone() override { delete this; }

 private:
  void start(const v1::PullTaskRequest& request) {
    std::optional<SessionView> session = registry_->authenticate(request.session_token());
    std::lock_guard<std::mutex> lock(mu_);
    if (!session) {
      engine_->refusals().add(Refusal::kUnknownSession);
      finish_locked(unauthenticated());
      return;
    }
    token_ = session->token;
    // mu_ is held across pull(): an answer arriving at once from another thread waits for
    // parked_ to be set.
    RoundEngine::PullStart start =
        engine_->pull(*session, std::chrono::milliseconds(request.poll_timeout_ms()),
                      [this](PollAnswer answer) { on_answer(std::move(answer)); });
    if (start.answer) {
      answer_locked(std::move(*start.answer));
    } else {
      parked_ = true;
      parked_id_ = start.parked_id;
    }
  }

  void on_answer(PollAnswer answer) {
    std::string failed_task;
    {
      std::lock_guard<std::mutex> lock(mu_);
      parked_ = false;
      if (cancelled_) {
        if (answer.task) failed_task = answer.task->id;
        finish_locked(grpc::Status::CANCELLED);
      } else {
        answer_locked(std::move(answer));
      }
    }
    if (!failed_task.empty()) engine_->delivery_failed(failed_task);
  }

  void answer_locked(PollAnswer answer) {
    registry_->touch(token_);
    v1::TaskHeader* header = chunk_.mutable_header();
    header->set_kind(wire_kind(answer));
    if (answer.kind == PollAnswer::Kind::kTask) {
      task_ = std::move(answer.task);
      header->set_task_id(task_->id);
      header->set_round(static_cast<uint64_t>(task_->round));
      header->set_strategy(task_->strategy);
      header->set_config_json(task_->config_json);
      header->set_client_id(task_->client_id);
      header->set_deadline_unix_ms(task_->deadline_unix_ms);
      encoder_ =
          std::make_unique<BundleEncoder>(*task_->bundle, kDefaultChunkBytes, *task_->digest);
      spdlog::debug("task {} -> {}", task_->id, task_->client_id);
    }
    StartWrite(&chunk_);
  }

  void finish_locked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  ClientRegistry* const registry_;
  RoundEngine* const engine_;

  std::mutex mu_;
  std::string token_;
  bool parked_ = false;
  uint64_t parked_id_ = 0;
  bool cancelled_ = false;
  bool finished_ = false;
  std::shared_ptr<const Task> task_;  // keeps the bundle alive while the encoder reads it
  std::unique_ptr<BundleEncoder> encoder_;
  v1::TaskChunk chunk_;  // the message being written; reused
};

// PushResult: reads the header, takes an upload slot, then streams the bundle chunks into the
// engine's decoder. Deletes itself in OnDone.
class PushReactor final : public grpc::ServerReadReactor<v1::ResultChunk> {
 public:
  PushReactor(ClientRegistry* registry, RoundEngine* engine, grpc::CallbackServerContext* context,
              v1::PushResultResponse* response)
      : registry_(registry), engine_(engine), context_(context), response_(response) {
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      try {
        if (!upload_ && !finished_) {
          on_header_locked(ok);
        } else if (upload_) {
          release = on_body_locked(ok);
        }
      } catch (const std::exception& e) {
        release = end_upload_locked(/*abandon=*/true);
        finish_locked(internal_error("PushResult", &e));
      }
    }
    if (release) engine_->upload_gate().release();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (waiting_slot_ && engine_->upload_gate().cancel(ticket_)) {
      waiting_slot_ = false;
      end_upload_locked(/*abandon=*/true);
      finish_locked(grpc::Status::CANCELLED);
    }
  }

  void OnDone() override { delete this; }

 private:
  void on_header_locked(bool ok) {
    if (!ok) {
      engine_->refusals().add(Refusal::kMalformedStream);
      finish_locked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "PushResult: the stream ended before a ResultHeader"));
      return;
    }
    if (!chunk_.has_header()) {
      engine_->refusals().add(Refusal::kMalformedStream);
      finish_locked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "PushResult: the first message must be a ResultHeader"));
      return;
    }
    const v1::ResultHeader& header = chunk_.header();
    std::optional<SessionView> session = registry_->authenticate(header.session_token());
    if (!session) {
      engine_->refusals().add(Refusal::kUnknownSession);
      finish_locked(unauthenticated());
      return;
    }
    token_ = session->token;
    RoundEngine::PushStart start = engine_->begin_push(*session, header);
    if (!start.status.ok()) {
      finish_locked(to_grpc(start.status));
      return;
    }
    if (start.response) {
      *response_ = std::move(*start.response);
      finish_locked(grpc::Status::OK);
      return;
    }
    upload_ = std::move(start.upload);
    uint64_t ticket = 0;
    if (engine_->upload_gate().acquire([this] { on_slot(); }, &ticket)) {
      holds_slot_ = true;
      StartRead(&chunk_);
    } else {
      waiting_slot_ = true;
      ticket_ = ticket;
    }
  }

  // Called by UploadGate::release on another thread: the slot is ours now.
  void on_slot() {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      waiting_slot_ = false;
      holds_slot_ = true;
      if (cancelled_) {
        release = end_upload_locked(/*abandon=*/true);
        finish_locked(grpc::Status::CANCELLED);
      } else {
        StartRead(&chunk_);
      }
    }
    if (release) engine_->upload_gate().release();
  }

  // Returns whether the caller must release the upload slot (outside mu_).
  bool on_body_locked(bool ok) {
    if (!ok) {
      // End of stream: a clean half-close, or a broken/cancelled call.
      const bool broken = cancelled_ || context_->IsCancelled();
      if (broken) {
        bool release = end_upload_locked(/*abandon=*/true);
        finish_locked(grpc::Status::CANCELLED);
        return release;
      }
      return complete_locked();
    }
    if (chunk_.has_header()) {
      engine_->refusals().add(Refusal::kMalformedStream);
      bool release = end_upload_locked(/*abandon=*/true);
      finish_locked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "PushResult: a second ResultHeader in one stream"));
      return release;
    }
    registry_->touch(token_);
    Status added = upload_->add(chunk_.bundle());
    // A refused chunk refuses the result: answer now, without reading the rest.
    if (!added.ok()) return complete_locked();
    StartRead(&chunk_);
    return false;
  }

  bool complete_locked() {
    *response_ = engine_->complete_push(std::move(upload_));
    const bool release = holds_slot_;
    holds_slot_ = false;
    finish_locked(grpc::Status::OK);
    return release;
  }

  // Gives the upload back to the engine unanswered; returns whether a slot must be released.
  bool end_upload_locked(bool abandon) {
    if (upload_ && abandon) engine_->abandon_push(std::move(upload_));
    upload_.reset();
    const bool release = holds_slot_;
    holds_slot_ = false;
    return release;
  }

  void finish_locked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  ClientRegistry* const registry_;
  RoundEngine* const engine_;
  grpc::CallbackServerContext* const context_;
  v1::PushResultResponse* const response_;

  std::mutex mu_;
  std::string token_;
  std::unique_ptr<PendingUpload> upload_;
  bool waiting_slot_ = false;
  bool holds_slot_ = false;
  uint64_t ticket_ = 0;
  bool cancelled_ = false;
  bool finished_ = false;
  v1::ResultChunk chunk_;  // the message being read; reused
};

}  // namespace

FederationService::FederationService(ServiceOptions options, ClientRegistry* registry,
                                     RoundEngine* engine)
    : options_(std::move(options)), registry_(registry), engine_(engine) {}

grpc::Status FederationService::join(grpc::CallbackServerContext* context,
                                     const v1::JoinRequest& request, v1::JoinResponse* response) {
  RefusalCounters& refusals = engine_->refusals();
  if (request.protocol_version() != v1::PROTOCOL_VERSION_1) {
    refusals.add(Refusal::kProtocolVersion);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "protocol version " + std::to_string(request.protocol_version()) +
                            " is not supported (this coordinator speaks version 1)");
  }
  const bool has_secret = !options_.token_secret.empty();
  const bool is_virtual = request.virtual_clients_size() > 0;
  std::string identity;
  if (options_.mutual_tls) {
    std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
    std::vector<grpc::string_ref> names;
    if (auth) names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    if (names.empty() || names.front().empty()) {
      refusals.add(Refusal::kCertificate);
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the client certificate has no common name (CN)");
    }
    identity.assign(names.front().data(), names.front().size());
  } else {
    identity = request.client_id();
    if (identity.empty()) {
      refusals.add(Refusal::kBadJoin);
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "join: client_id is empty");
    }
    if (has_secret && !is_virtual &&
        !verify_join_token(options_.token_secret, identity, request.join_token())) {
      refusals.add(Refusal::kJoinToken);
      spdlog::warn("join refused: bad join token for client \"{}\" from {}", identity,
                   context->peer());
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "bad join token for client \"" + identity + "\"");
    }
  }

  std::vector<ClientRecord> clients;
  if (!is_virtual) {
    clients.push_back({identity, request.num_examples(), request.model_family()});
  } else {
    if (options_.mutual_tls && !has_secret) {
      refusals.add(Refusal::kBadJoin);
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "virtual clients under mutual TLS need join tokens: start the "
                          "coordinator with --token-secret-file");
    }
    for (const v1::VirtualClient& v : request.virtual_clients()) {
      if (has_secret && !verify_join_token(options_.token_secret, v.client_id(), v.join_token())) {
        refusals.add(Refusal::kJoinToken);
        spdlog::warn("join refused: bad join token for virtual client \"{}\" from {}",
                     v.client_id(), context->peer());
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "bad join token for virtual client \"" + v.client_id() + "\"");
      }
      clients.push_back({v.client_id(), v.num_examples(), v.model_family()});
    }
  }

  Admission admission = registry_->admit(identity, clients);
  if (!admission.status.ok()) {
    spdlog::warn("join of \"{}\" refused: {}", identity, admission.status.message());
    refusals.add(admission.already_connected ? Refusal::kAlreadyConnected : Refusal::kBadJoin);
    if (admission.already_connected) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, admission.status.message());
    }
    return to_grpc(admission.status);
  }
  engine_->clients_joined(admission);
  const std::string takeover =
      admission.taken_over.empty()
          ? ""
          : ", replacing " + std::to_string(admission.taken_over.size()) + " stale session(s)";
  if (clients.size() > 1) {
    spdlog::info("\"{}\" joined hosting {} clients ({} .. {}){}", identity, clients.size(),
                 clients.front().id, clients.back().id, takeover);
  } else {
    spdlog::info("client {} joined ({} examples{}{}){}", clients.front().id,
                 clients.front().num_examples,
                 clients.front().model_family.empty() ? "" : ", " + clients.front().model_family,
                 identity == clients.front().id ? "" : ", via \"" + identity + "\"", takeover);
  }
  response->set_session_token(admission.session_token);
  response->set_run_id(options_.run_id);
  response->set_run_config_json(options_.run_config_json);
  response->set_heartbeat_interval_ms(
      static_cast<uint32_t>(options_.federation.heartbeat_interval_ms));
  response->set_max_update_bytes(options_.federation.max_update_bytes);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* FederationService::Join(grpc::CallbackServerContext* context,
                                                  const v1::JoinRequest* request,
                                                  v1::JoinResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status;
  try {
    status = join(context, *request, response);
  } catch (const std::exception& e) {
    status = internal_error("Join", &e);
  } catch (...) {
    status = internal_error("Join", nullptr);
  }
  reactor->Finish(status);
  return reactor;
}

grpc::ServerWriteReactor<v1::TaskChunk>* FederationService::PullTask(
    grpc::CallbackServerContext* /*context*/, const v1::PullTaskRequest* request) {
  return new PullReactor(registry_, engine_, *request);
}

grpc::ServerReadReactor<v1::ResultChunk>* FederationService::PushResult(
    grpc::CallbackServerContext* context, v1::PushResultResponse* response) {
  return new PushReactor(registry_, engine_, context, response);
}

grpc::ServerUnaryReactor* FederationService::Heartbeat(grpc::CallbackServerContext* context,
                                                       const v1::HeartbeatRequest* request,
                                                       v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status;
  try {
    std::optional<SessionView> session = registry_->authenticate(request->session_token());
    if (!session) {
      engine_->refusals().add(Refusal::kUnknownSession);
      status = unauthenticated();
    } else {
      response->set_cancel(engine_->heartbeat(*session, request->task_id()));
    }
  } catch (const std::exception& e) {
    status = internal_error("Heartbeat", &e);
  } catch (...) {
    status = internal_error("Heartbeat", nullptr);
  }
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* FederationService::Leave(grpc::CallbackServerContext* context,
                                                   const v1::LeaveRequest* request,
                                                   v1::LeaveResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status;
  try {
    std::optional<RemovedSession> removed = registry_->leave(request->session_token());
    if (!removed) {
      engine_->refusals().add(Refusal::kUnknownSession);
      status = unauthenticated();
    } else {
      const std::string reason =
          "client left" + (request->reason().empty() ? "" : ": " + request->reason());
      spdlog::info("\"{}\" left ({} client(s)){}", removed->name, removed->client_ids.size(),
                   request->reason().empty() ? "" : ": " + request->reason());
      engine_->clients_gone(*removed, reason);
    }
  } catch (const std::exception& e) {
    status = internal_error("Leave", &e);
  } catch (...) {
    status = internal_error("Leave", nullptr);
  }
  reactor->Finish(status);
  return reactor;
}

}  // namespace fedtail::coordinator
