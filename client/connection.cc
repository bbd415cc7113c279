#include "client/connection.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "client/fault_pause.h"
#include "common/wire/bundle_codec.h"
#include "common/wire/grpc_status.h"

namespace fedtail::client {

namespace {

// Extra time a PullTask may take beyond the poll time: the task's bundle has to arrive too.
constexpr int64_t kPullMarginMs = 30'000;
// A PushResult gets this long plus kPushMsPerMiB per MiB of payload (a 10 MiB/s floor).
constexpr int64_t kPushBaseMs = 60'000;
constexpr int64_t kPushMsPerMiB = 100;
constexpr int64_t kLeaveTimeoutMs = 5'000;

int64_t steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::chrono::system_clock::time_point deadline_in_ms(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

std::string describe(const grpc::Status& status) { return from_grpc(status).message(); }

// A hint appended to connection failures whose text points at a TLS problem.
std::string tls_hint(const grpc::Status& status, bool plaintext) {
  std::string message = status.error_message();
  std::string lower = message;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (plaintext) {
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return "";
    return " [plaintext connection: if the coordinator uses TLS, pass --tls-ca]";
  }
  if (lower.find("handshake") != std::string::npos || lower.find("ssl") != std::string::npos ||
      lower.find("certificate") != std::string::npos) {
    return " [TLS handshake failed: check --tls-ca, --tls-cert and --tls-key against the "
           "coordinator's certificates]";
  }
  return "";
}

std::string seconds_text(double s) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f s", s);
  return buffer;
}

}  // namespace

uint64_t unix_now_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

Result<std::unique_ptr<Connection>> Connection::create(ConnectionOptions options) {
  if (options.target.empty()) return Status::InvalidArgument("--coordinator: must not be empty");
  const bool insecure_ok = options.insecure || is_loopback_address(options.target);
  Result<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      make_channel_credentials(options.tls, insecure_ok);
  if (!credentials.ok()) {
    return credentials.status().with_context("coordinator " + options.target);
  }
  grpc::ChannelArguments args;
  // gRPC's own reconnection backoff (up to 120 s by default) would keep the channel failing fast
  // long after the coordinator is back; keep it in step with ours (and wait_before_retry resets it
  // before each retry).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(options.backoff.base_s * 1000));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(options.backoff.base_s * 1000));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(options.backoff.cap_s * 1000));
  // Detect a half-open connection (coordinator host gone) during long polls and training; the
  // coordinator permits pings this frequent.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, *credentials, args);
  if (!channel) return Status::Internal("gRPC could not create a channel to " + options.target);
  return std::unique_ptr<Connection>(new Connection(std::move(options), std::move(channel)));
}

Connection::Connection(ConnectionOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Federation::NewStub(channel_)),
      backoff_(options_.client_id, options_.backoff) {}

Connection::~Connection() = default;

void Connection::set_join_request(const v1::JoinRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  join_request_ = request;
}

void Connection::set_join_callback(JoinCallback callback) {
  std::lock_guard<std::mutex> lock(mu_);
  join_callback_ = std::move(callback);
}

std::string Connection::session_token() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_token_;
}

void Connection::request_stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_.store(true);
  for (grpc::ClientContext* context : active_) context->TryCancel();
  wake_.notify_all();
}

bool Connection::track(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_.load()) return false;
  active_.insert(context);
  return true;
}

void Connection::untrack(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  active_.erase(context);
}

Connection::Failure Connection::classify(const grpc::Status& status, bool session_call) const {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::NOT_FOUND:
      return session_call ? Failure::kRejoin : Failure::kFatal;
    case grpc::StatusCode::ALREADY_EXISTS:
      // Join: this id still has a live session (a restarted client whose old session has not
      // expired yet); it expires within the coordinator's client timeout.
      return session_call ? Failure::kFatal : Failure::kRetry;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::DATA_LOSS:
    case grpc::StatusCode::OUT_OF_RANGE:
      return Failure::kFatal;
    default:
      // UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN:
      // transport trouble or a busy coordinator.
      return Failure::kRetry;
  }
}

void Connection::note_success() {
  backoff_.reset();
  unreachable_since_ms_ = 0;
}

Status Connection::wait_before_retry(const std::string& what, const grpc::Status& status) {
  if (stop_.load()) return Status::Unavailable("stopping");
  const int64_t now = steady_now_ms();
  if (unreachable_since_ms_ == 0) unreachable_since_ms_ = now;
  // Once joined, a failure is an outage, not a configuration problem: no hint.
  const std::string hint = joined_once_.load() ? "" : tls_hint(status, options_.tls.ca.empty());
  const std::string reason = what + ": " + describe(status) + hint;
  const double down_s = (now - unreachable_since_ms_) / 1000.0;
  if (options_.retry_timeout_s > 0 && down_s >= options_.retry_timeout_s) {
    return Status::Unavailable("coordinator " + options_.target + " unreachable for " +
                               seconds_text(down_s) + " (" + reason + "); giving up");
  }
  double delay_s = backoff_.next_delay_s();
  // The coordinator answered (the channel is up) but refused for now: call again within the
  // heartbeat interval, so that it does not expire our session (and fail our task) meanwhile.
  const uint32_t heartbeat_ms = heartbeat_interval_ms_.load();
  if (heartbeat_ms > 0 && !session_token().empty() &&
      channel_->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
    delay_s = std::min(delay_s, heartbeat_ms / 1000.0);
  }
  if (options_.retry_timeout_s > 0) {
    delay_s = std::min(delay_s, options_.retry_timeout_s - down_s + 0.05);
  }
  const bool unreachable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  spdlog::warn("coordinator {} {} ({}); retrying in {}", options_.target,
               unreachable ? "unreachable" : "busy or refusing for now", reason,
               seconds_text(delay_s));
  std::unique_lock<std::mutex> lock(mu_);
  wake_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(delay_s * 1000)),
                 [this] { return stop_.load(); });
  if (stop_.load()) return Status::Unavailable("stopping");
  // Within gRPC's own reconnection backoff a call fails at once with the last connection error,
  // even once the network is back: make the retry we waited for try a fresh connection.
  grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
  return Status::OK();
}

Status Connection::join_once(v1::JoinResponse* response, grpc::Status* rpc_status) {
  v1::JoinRequest request;
  {
    std::lock_guard<std::mutex> lock(mu_);
    request = join_request_;
  }
  request.set_client_id(options_.client_id);
  request.set_protocol_version(v1::PROTOCOL_VERSION_1);
  request.set_join_token(options_.join_token);
  grpc::ClientContext context;
  context.set_deadline(deadline_in_ms(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
  if (!track(&context)) return Status::Unavailable("stopping");
  *rpc_status = stub_->Join(&context, request, response);
  untrack(&context);
  return Status::OK();
}

Result<v1::JoinResponse> Connection::join() {
  while (true) {
    if (stop_.load()) return Status::Unavailable("stopping");
    v1::JoinResponse response;
    grpc::Status status;
    FEDTAIL_RETURN_IF_ERROR(join_once(&response, &status));
    if (status.ok()) {
      note_success();
      joined_once_.store(true);
      heartbeat_interval_ms_.store(response.heartbeat_interval_ms());
      JoinCallback callback;
      {
        std::lock_guard<std::mutex> lock(mu_);
        session_token_ = response.session_token();
        callback = join_callback_;
      }
      spdlog::info("joined coordinator {} as {} (run {})", options_.target, options_.client_id,
                   response.run_id());
      if (callback) FEDTAIL_RETURN_IF_ERROR(callback(response));
      return response;
    }
    if (stop_.load()) return Status::Unavailable("stopping");
    if (classify(status, /*session_call=*/false) == Failure::kFatal) {
      return Status::FailedPrecondition("coordinator " + options_.target + " refused to let " +
                                        options_.client_id + " join: " + describe(status) +
                                        tls_hint(status, options_.tls.ca.empty()));
    }
    FEDTAIL_RETURN_IF_ERROR(wait_before_retry("join", status));
  }
}

Result<PulledTask> Connection::pull_task(uint32_t poll_timeout_ms) {
  int rejoins_in_a_row = 0;
  while (true) {
    if (stop_.load()) return Status::Unavailable("stopping");
    if (session_token().empty()) FEDTAIL_RETURN_IF_ERROR(join().status());

    v1::PullTaskRequest request;
    request.set_session_token(session_token());
    request.set_poll_timeout_ms(poll_timeout_ms);
    grpc::ClientContext context;
    context.set_deadline(deadline_in_ms(static_cast<int64_t>(poll_timeout_ms) + kPullMarginMs));
    if (!track(&context)) return Status::Unavailable("stopping");

    PulledTask task;
    bool have_header = false;
    bool have_bundle = false;
    BundleDecoder decoder;
    std::unique_ptr<grpc::ClientReader<v1::TaskChunk>> reader = stub_->PullTask(&context, request);
    v1::TaskChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) {
        if (have_header) {
          task.bundle_status = Status::Corruption("task stream: a second header");
          context.TryCancel();
          break;
        }
        task.header = chunk.header();
        have_header = true;
      } else if (chunk.has_bundle()) {
        if (!have_header) {
          task.bundle_status = Status::Corruption("task stream: bundle data before the header");
          context.TryCancel();
          break;
        }
        have_bundle = true;
        if (task.bundle_status.ok()) {
          Status added = decoder.add(chunk.bundle());
          if (!added.ok()) {
            task.bundle_status = added;
            context.TryCancel();
            break;
          }
        }
        if (chunk.bundle().index() == 0 && task.header.kind() == v1::TASK_KIND_FIT) {
          TEST_fault_pause(FaultPoint::kDownload, task.header.round(),
                           [this] { return stopping(); });
        }
      }
    }
    grpc::Status status = reader->Finish();
    untrack(&context);
    if (stop_.load()) return Status::Unavailable("stopping");

    if (have_header && (status.ok() || !task.bundle_status.ok())) {
      note_success();
      if (task.bundle_status.ok() && have_bundle) {
        Result<TensorBundle> bundle = decoder.finish();
        if (bundle.ok()) {
          task.bundle = std::move(bundle).value();
        } else {
          task.bundle_status = bundle.status();
        }
      }
      if (!task.bundle_status.ok()) {
        task.bundle_status =
            task.bundle_status.with_context("task " + task.header.task_id() + ": bundle refused");
      }
      return task;
    }
    if (status.ok()) {
      // An answer without a header: treat it as "nothing yet".
      note_success();
      spdlog::warn("coordinator {} answered PullTask without a task header; polling again",
                   options_.target);
      task.header.set_kind(v1::TASK_KIND_WAIT);
      return task;
    }
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !have_header) {
      // The coordinator held the poll past our deadline: not a failure, poll again.
      spdlog::debug("PullTask reached its deadline without a task; polling again");
      task.header.set_kind(v1::TASK_KIND_WAIT);
      return task;
    }
    Failure failure = classify(status, /*session_call=*/true);
    if (failure == Failure::kFatal) {
      return Status::FailedPrecondition("coordinator " + options_.target +
                                        " refused PullTask: " + describe(status));
    }
    if (failure == Failure::kRejoin) {
      spdlog::warn("coordinator {} does not know this session ({}); joining again", options_.target,
                   describe(status));
      {
        std::lock_guard<std::mutex> lock(mu_);
        session_token_.clear();
      }
      if (++rejoins_in_a_row > 1) FEDTAIL_RETURN_IF_ERROR(wait_before_retry("pull task", status));
      continue;
    }
    rejoins_in_a_row = 0;  // only back-to-back re-Joins wait
    FEDTAIL_RETURN_IF_ERROR(wait_before_retry("pull task", status));
  }
}

Result<v1::PushResultResponse> Connection::push_result(v1::ResultHeader header,
                                                       const TensorBundle& bundle,
                                                       uint64_t give_up_unix_ms, uint64_t round) {
  const uint64_t mib = bundle.payload_bytes() >> 20;
  const int64_t timeout_ms = kPushBaseMs + static_cast<int64_t>(mib) * kPushMsPerMiB;
  // Hash once: a retried upload re-sends the same chunks.
  const PayloadDigest digest = payload_digest(bundle);
  int rejoins_in_a_row = 0;
  while (true) {
    if (stop_.load()) return Status::Unavailable("stopping");
    if (give_up_unix_ms != 0 && unix_now_ms() > give_up_unix_ms) {
      return Status::DeadlineExceeded("task " + header.task_id() +
                                      ": the round's deadline passed before the result could be "
                                      "delivered");
    }
    if (session_token().empty()) FEDTAIL_RETURN_IF_ERROR(join().status());
    header.set_session_token(session_token());

    grpc::ClientContext context;
    context.set_deadline(deadline_in_ms(timeout_ms));
    if (!track(&context)) return Status::Unavailable("stopping");
    v1::PushResultResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::ResultChunk>> writer =
        stub_->PushResult(&context, &response);
    v1::ResultChunk chunk;
    *chunk.mutable_header() = header;
    bool open = writer->Write(chunk);
    // A failed task's header says everything: the coordinator answers without reading a bundle.
    if (open && header.ok()) {
      BundleEncoder encoder(bundle, kDefaultChunkBytes, digest);
      v1::BundleChunk bundle_chunk;
      while (open && encoder.next(&bundle_chunk)) {
        chunk.Clear();
        chunk.mutable_bundle()->Swap(&bundle_chunk);
        open = writer->Write(chunk);
        if (open && chunk.bundle().index() == 0 && bundle.size() > 0) {  // a fit update
          TEST_fault_pause(FaultPoint::kUpload, round, [this] { return stopping(); });
        }
        // Hand the buffer back so its capacity is reused for the next chunk.
        bundle_chunk.Swap(chunk.mutable_bundle());
      }
    }
    if (open) writer->WritesDone();
    grpc::Status status = writer->Finish();
    untrack(&context);
    if (stop_.load()) return Status::Unavailable("stopping");
    if (status.ok()) {
      note_success();
      return response;
    }
    Failure failure = classify(status, /*session_call=*/true);
    if (failure == Failure::kFatal) {
      return Status::FailedPrecondition("coordinator " + options_.target +
                                        " refused the result of task " + header.task_id() + ": " +
                                        describe(status));
    }
    if (failure == Failure::kRejoin) {
      spdlog::warn(
          "coordinator {} does not know this session ({}); joining again, then re-sending "
          "task {}",
          options_.target, describe(status), header.task_id());
      {
        std::lock_guard<std::mutex> lock(mu_);
        session_token_.clear();
      }
      if (++rejoins_in_a_row > 1) {
        FEDTAIL_RETURN_IF_ERROR(
            wait_before_retry("push result of task " + header.task_id(), status));
      }
      continue;
    }
    rejoins_in_a_row = 0;  // only back-to-back re-Joins wait
    FEDTAIL_RETURN_IF_ERROR(wait_before_retry("push result of task " + header.task_id(), status));
  }
}

Result<bool> Connection::heartbeat(const std::string& task_id, double progress) {
  v1::HeartbeatRequest request;
  request.set_session_token(session_token());
  request.set_task_id(task_id);
  request.set_progress(progress);
  grpc::ClientContext context;
  context.set_deadline(deadline_in_ms(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
  if (!track(&context)) return Status::Unavailable("stopping");
  v1::HeartbeatResponse response;
  grpc::Status status = stub_->Heartbeat(&context, request, &response);
  untrack(&context);
  if (!status.ok()) return from_grpc(status);
  return response.cancel();
}

Status Connection::leave(const std::string& reason) {
  const std::string token = session_token();
  if (token.empty()) return Status::OK();
  v1::LeaveRequest request;
  request.set_session_token(token);
  request.set_reason(reason);
  v1::LeaveResponse response;
  // Not tracked: Leave is sent while stopping, and must not be cancelled by it.
  grpc::ClientContext context;
  context.set_deadline(deadline_in_ms(kLeaveTimeoutMs));
  grpc::Status status = stub_->Leave(&context, request, &response);
  {
    std::lock_guard<std::mutex> lock(mu_);
    session_token_.clear();
  }
  if (!status.ok()) return from_grpc(status).with_context("Leave");
  return Status::OK();
}

}  // namespace fedtail::client
