#include "coordinator/service.h"

#include <grpc/grpc_security_constants.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

#include "common/base/peer_text.h"
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

// Requests other than Join and PushResult carry a token and a few fields; Join a few per hosted
// client. Larger ones are refused before any work, HMAC or log line (gRPC has read them whole,
// within the server's receive limit, kMaxReceiveMessageBytes).
constexpr size_t kMaxSmallRequestBytes = 4 << 10;
constexpr size_t kMaxJoinBytesPerClient = 4 << 10;

grpc::Status too_large(const char* method, size_t bytes, size_t limit) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      std::string(method) + ": request of " + std::to_string(bytes) +
                          " bytes (at most " + std::to_string(limit) + ")");
}

// The common name of the connection's client certificate ("" when there is none).
std::string peer_common_name(const grpc::ServerContextBase* context) {
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (!auth) return "";
  std::vector<grpc::string_ref> names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  if (names.empty()) return "";
  return std::string(names.front().data(), names.front().size());
}

// The session presenting `token`. Under mutual TLS the connection's certificate must be the one
// that joined: a token stolen from one client is of no use to another. Sets *refused otherwise.
std::optional<SessionView> authenticate_call(ClientRegistry* registry, RoundEngine* engine,
                                             bool mutual_tls,
                                             const grpc::ServerContextBase* context,
                                             const std::string& token, grpc::Status* refused) {
  std::optional<SessionView> session = registry->authenticate(token);
  if (!session) {
    engine->refusals().add(Refusal::kUnknownSession);
    *refused = unauthenticated();
    return std::nullopt;
  }
  if (mutual_tls && peer_common_name(context) != session->name) {
    engine->refusals().add(Refusal::kCertificate);
    *refused = grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "this session belongs to another client certificate");
    return std::nullopt;
  }
  return session;
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
  switch (answer.task->kind) {
    case TaskKind::kFit:
      return v1::TASK_KIND_FIT;
    case TaskKind::kEvaluate:
      return v1::TASK_KIND_EVALUATE;
    case TaskKind::kSecAgg:
      return v1::TASK_KIND_SECAGG;
  }
  return v1::TASK_KIND_UNSPECIFIED;
}

// PullTask: parks in the engine until a task (or WAIT/SHUTDOWN) is ready, then writes the header
// and the bundle chunks one write at a time. Deletes itself in OnDone.
class PullReactor final : public grpc::ServerWriteReactor<v1::TaskChunk> {
 public:
  PullReactor(ClientRegistry* registry, RoundEngine* engine, bool mutual_tls, int64_t max_examples,
              grpc::CallbackServerContext* context, const v1::PullTaskRequest& request)
      : registry_(registry),
        engine_(engine),
        mutual_tls_(mutual_tls),
        max_examples_(max_examples),
        context_(context) {
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
    const size_t limit = kMaxSmallRequestBytes * std::max(1, request.declared_size());
    if (request.ByteSizeLong() > limit) {
      std::lock_guard<std::mutex> lock(mu_);
      engine_->refusals().add(Refusal::kMalformedStream);
      finish_locked(too_large("PullTask", request.ByteSizeLong(), limit));
      return;
    }
    grpc::Status refused;
    std::optional<SessionView> session = authenticate_call(
        registry_, engine_, mutual_tls_, context_, request.session_token(), &refused);
    if (session && request.declared_size() > 0) {
      // The example counts the client could not declare at its first Join (before it had the
      // run config): final from now on, and the bound of its updates' num_examples.
      std::vector<ClientRecord> counts;
      for (const v1::ClientCount& c : request.declared()) {
        counts.push_back({c.client_id(), c.num_examples(), ""});
      }
      Status declared = registry_->declare(session->token, counts, max_examples_);
      if (!declared.ok()) {
        engine_->refusals().add(Refusal::kBadHeader);
        std::lock_guard<std::mutex> lock(mu_);
        finish_locked(to_grpc(declared.with_context("PullTask")));
        return;
      }
      session = registry_->authenticate(request.session_token());  // with the counts
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!session) {
      finish_locked(refused.ok() ? unauthenticated() : refused);
      return;
    }
    token_ = session->token;
    // mu_ is held across pull(): an answer arriving at once from another thread waits for
    // parked_ to be set.
    RoundEngine::PullStart start =
        engine_->pull(*session, std::chrono::milliseconds(request.poll_timeout_ms()),
                      [this](PollAnswer answer) { on_answer(std::move(answer)); });
    if (!start.status.ok()) {
      finish_locked(to_grpc(start.status));
    } else if (start.answer) {
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
  const bool mutual_tls_;
  const int64_t max_examples_;
  grpc::CallbackServerContext* const context_;

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
  PushReactor(ClientRegistry* registry, RoundEngine* engine, bool mutual_tls,
              grpc::CallbackServerContext* context, v1::PushResultResponse* response)
      : registry_(registry),
        engine_(engine),
        mutual_tls_(mutual_tls),
        context_(context),
        response_(response) {
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
    if (release) engine_->upload_gate().release(token_);
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

  void OnDone() override {
    engine_->upload_watch().remove(watched_);  // waits for a stop() call in progress
    delete this;
  }

 private:
  // UploadWatch asks this stream to stop (timer thread; mu_ not held by the caller).
  void on_watch_stop(UploadWatch::Reason reason, const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      if (reason != UploadWatch::Reason::kPhaseClosed) stalled_ = message;
    }
    spdlog::warn("upload of task {} by \"{}\" cancelled: {}", task_id_, session_name_, message);
    // Last: gRPC may run OnCancel, OnReadDone and OnDone inline here, deleting this reactor.
    grpc::CallbackServerContext* const context = context_;
    context->TryCancel();
  }

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
    grpc::Status refused;
    std::optional<SessionView> session = authenticate_call(
        registry_, engine_, mutual_tls_, context_, header.session_token(), &refused);
    if (!session) {
      finish_locked(refused);
      return;
    }
    token_ = session->token;
    session_name_ = session->name;
    task_id_ = header.task_id();
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
    watched_ = engine_->upload_watch().add(
        task_id_, [this](UploadWatch::Reason reason, const std::string& message) {
          on_watch_stop(reason, message);
        });
    uint64_t ticket = 0;
    // One slot per session: a client's further uploads wait for its first.
    if (engine_->upload_gate().acquire(
            token_, [this] { on_slot(); }, &ticket)) {
      holds_slot_ = true;
      watched_->reading();
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
        watched_->reading();
        StartRead(&chunk_);
      }
    }
    if (release) engine_->upload_gate().release(token_);
  }

  // Returns whether the caller must release the upload slot (outside mu_).
  bool on_body_locked(bool ok) {
    if (!ok) {
      // End of stream: a clean half-close, or a broken/cancelled call.
      const bool broken = cancelled_ || context_->IsCancelled();
      if (broken) {
        if (!stalled_.empty() && upload_) {
          // Stopped by UploadWatch: counted; the task is free for a retry (or fails, the second
          // time).
          engine_->stalled_push(std::move(upload_), stalled_);
        }
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
    watched_->progress(chunk_.ByteSizeLong());
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
  const bool mutual_tls_;
  grpc::CallbackServerContext* const context_;
  v1::PushResultResponse* const response_;

  std::mutex mu_;
  std::string token_;
  std::string session_name_;
  std::string task_id_;
  std::shared_ptr<UploadWatch::Entry> watched_;  // once the header is accepted
  std::string stalled_;                          // why UploadWatch stopped the upload
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
    : options_(std::move(options)), registry_(registry), engine_(engine) {
  FEDTAIL_CHECK(options_.token_secret.empty() || options_.tokens != nullptr);
}

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
  // Bounds and ids first: nothing of an unchecked request is hashed, logged or echoed.
  const size_t hosted = static_cast<size_t>(std::max(1, request.virtual_clients_size()));
  if (request.virtual_clients_size() > options_.federation.max_virtual_clients_per_session) {
    refusals.add(Refusal::kResourceLimit);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "join: " + std::to_string(request.virtual_clients_size()) +
                            " virtual clients in one Join (federation."
                            "max_virtual_clients_per_session " +
                            std::to_string(options_.federation.max_virtual_clients_per_session) +
                            ")");
  }
  if (request.ByteSizeLong() > hosted * kMaxJoinBytesPerClient) {
    refusals.add(Refusal::kBadJoin);
    return too_large("Join", request.ByteSizeLong(), hosted * kMaxJoinBytesPerClient);
  }
  const int64_t examples_cap = options_.federation.max_declared_examples();
  // `id` empty: the identity comes from the certificate; only the count is checked.
  auto check_declared = [&](const std::string& id, int64_t n) -> grpc::Status {
    if (!id.empty() || !options_.mutual_tls) {
      Status valid = validate_client_id(id, "join: client id");
      if (!valid.ok()) return to_grpc(valid);
    }
    if (n < 0 || n > examples_cap) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "join: client \"" + (id.empty() ? std::string("(certificate)") : id) +
                              "\" declares " + std::to_string(n) +
                              " examples (at least 0, at most " + std::to_string(examples_cap) +
                              (options_.federation.max_examples_per_client > 0
                                   ? ", federation.max_examples_per_client)"
                                   : ")"));
    }
    return grpc::Status::OK;
  };
  {
    // The session's own id (a worker's name when it hosts virtual clients); under mutual TLS the
    // certificate names the client instead.
    grpc::Status checked = check_declared(options_.mutual_tls ? std::string() : request.client_id(),
                                          is_virtual ? 0 : request.num_examples());
    if (!checked.ok()) {
      refusals.add(Refusal::kBadJoin);
      return checked;
    }
  }
  for (const v1::VirtualClient& v : request.virtual_clients()) {
    grpc::Status checked = check_declared(v.client_id(), v.num_examples());
    if (!checked.ok()) {
      refusals.add(Refusal::kBadJoin);
      return checked;
    }
  }
  std::string identity;
  if (options_.mutual_tls) {
    identity = peer_common_name(context);
    if (identity.empty()) {
      refusals.add(Refusal::kCertificate);
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the client certificate has no common name (CN)");
    }
    if (!validate_client_id(identity, "certificate CN").ok()) {
      refusals.add(Refusal::kCertificate);
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "the client certificate's common name is not a valid client id");
    }
  } else {
    identity = request.client_id();
    const Status token = has_secret && !is_virtual
                             ? options_.tokens->check(identity, request.join_token())
                             : Status::OK();
    if (!token.ok()) {
      refusals.add(Refusal::kJoinToken);
      spdlog::warn("join refused: bad join token for client \"{}\" from {}: {}", identity,
                   context->peer(), token.message());
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "bad join token for client \"" + identity + "\": " + token.message());
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
      const Status token =
          has_secret ? options_.tokens->check(v.client_id(), v.join_token()) : Status::OK();
      if (!token.ok()) {
        refusals.add(Refusal::kJoinToken);
        spdlog::warn("join refused: bad join token for virtual client \"{}\" from {}: {}",
                     v.client_id(), context->peer(), token.message());
        return grpc::Status(
            grpc::StatusCode::UNAUTHENTICATED,
            "bad join token for virtual client \"" + v.client_id() + "\": " + token.message());
      }
      clients.push_back({v.client_id(), v.num_examples(), v.model_family()});
    }
  }

  Admission admission = registry_->admit(identity, clients, options_.federation.max_clients);
  if (!admission.status.ok()) {
    spdlog::warn("join of \"{}\" refused: {}", identity, admission.status.message());
    refusals.add(admission.already_connected ? Refusal::kAlreadyConnected
                 : admission.status.code() == StatusCode::kResourceExhausted
                     ? Refusal::kResourceLimit
                     : Refusal::kBadJoin);
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
    grpc::CallbackServerContext* context, const v1::PullTaskRequest* request) {
  return new PullReactor(registry_, engine_, options_.mutual_tls,
                         options_.federation.max_declared_examples(), context, *request);
}

grpc::ServerReadReactor<v1::ResultChunk>* FederationService::PushResult(
    grpc::CallbackServerContext* context, v1::PushResultResponse* response) {
  return new PushReactor(registry_, engine_, options_.mutual_tls, context, response);
}

grpc::ServerUnaryReactor* FederationService::Heartbeat(grpc::CallbackServerContext* context,
                                                       const v1::HeartbeatRequest* request,
                                                       v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status;
  try {
    if (request->ByteSizeLong() > kMaxSmallRequestBytes) {
      engine_->refusals().add(Refusal::kMalformedStream);
      status = too_large("Heartbeat", request->ByteSizeLong(), kMaxSmallRequestBytes);
    } else if (std::optional<SessionView> session =
                   authenticate_call(registry_, engine_, options_.mutual_tls, context,
                                     request->session_token(), &status)) {
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
    std::optional<RemovedSession> removed;
    if (request->ByteSizeLong() > kMaxSmallRequestBytes) {
      engine_->refusals().add(Refusal::kMalformedStream);
      status = too_large("Leave", request->ByteSizeLong(), kMaxSmallRequestBytes);
    } else if (authenticate_call(registry_, engine_, options_.mutual_tls, context,
                                 request->session_token(), &status)) {
      removed = registry_->leave(request->session_token());
      if (!removed) status = unauthenticated();  // it expired or left meanwhile
    }
    if (removed) {
      // The client's words go into the log and metrics.jsonl: cut and made printable.
      const std::string said = bounded_text(request->reason());
      const std::string reason = "client left" + (said.empty() ? "" : ": " + said);
      spdlog::info("\"{}\" left ({} client(s)){}", removed->name, removed->client_ids.size(),
                   said.empty() ? "" : ": " + said);
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
