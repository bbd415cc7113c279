// Connection's channel and RPCs: creating the channel and stub, the session, and the calls (Join,
// PullTask, PushResult, Heartbeat, Leave), each with its client-side deadline and cancellable by
// request_stop(). What to do when a call fails (retry after a backoff, re-Join, give up) is the
// retry policy, in connection_retry.cc.
#include "client/connection.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "client/connection_detail.h"
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

std::chrono::system_clock::time_point deadline_in_ms(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
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
  bool counts = request.num_examples() > 0;
  for (const v1::VirtualClient& v : request.virtual_clients()) counts |= v.num_examples() > 0;
  declare_counts_ = counts;
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
                                        options_.client_id + " join: " + detail::describe(status) +
                                        detail::tls_hint(status, options_.tls.ca.empty()));
    }
    FEDTAIL_RETURN_IF_ERROR(wait_before_retry("join", status));
  }
}

Result<PulledTask> Connection::pull_task(uint32_t poll_timeout_ms) {
  int rejoins_in_a_row = 0;
  while (true) {
    if (stop_.load()) return Status::Unavailable("stopping");
    if (session_token().empty()) FEDTAIL_RETURN_IF_ERROR(join().status());

    // The poll time comes from the coordinator's run config: bound it client-side, and with it
    // this call's deadline.
    const uint32_t poll_ms = std::min(poll_timeout_ms, kMaxPollTimeoutMs);
    v1::PullTaskRequest request;
    request.set_session_token(session_token());
    request.set_poll_timeout_ms(poll_ms);
    bool declaring = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (declare_counts_) {
        declaring = true;
        if (join_request_.virtual_clients_size() == 0) {
          v1::ClientCount* c = request.add_declared();
          c->set_client_id(options_.client_id);
          c->set_num_examples(join_request_.num_examples());
        }
        for (const v1::VirtualClient& v : join_request_.virtual_clients()) {
          v1::ClientCount* c = request.add_declared();
          c->set_client_id(v.client_id());
          c->set_num_examples(v.num_examples());
        }
      }
    }
    grpc::ClientContext context;
    context.set_deadline(deadline_in_ms(static_cast<int64_t>(poll_ms) + kPullMarginMs));
    if (!track(&context)) return Status::Unavailable("stopping");

    PulledTask task;
    bool have_header = false;
    bool have_bundle = false;
    DecodeLimits limits;
    limits.max_payload_bytes = options_.max_bundle_bytes;
    BundleDecoder decoder(limits);
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
        if (chunk.bundle().has_header() &&
            chunk.bundle().header().payload_bytes() > options_.max_bundle_bytes) {
          // Checked here, before the decoder allocates the tensors, so that the refusal names the
          // flag that sets the limit.
          task.bundle_status = Status::ResourceExhausted(
              "the task's bundle has " + std::to_string(chunk.bundle().header().payload_bytes()) +
              " bytes, more than this client accepts (--max-bundle-bytes " +
              std::to_string(options_.max_bundle_bytes) + ")");
          context.TryCancel();
          break;
        }
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
    if (declaring && status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      declare_counts_ = false;  // the coordinator has them
    }

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
                                        " refused PullTask: " + detail::describe(status));
    }
    if (failure == Failure::kRejoin) {
      spdlog::warn("coordinator {} does not know this session ({}); joining again", options_.target,
                   detail::describe(status));
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
                                        detail::describe(status));
    }
    if (failure == Failure::kRejoin) {
      spdlog::warn(
          "coordinator {} does not know this session ({}); joining again, then re-sending "
          "task {}",
          options_.target, detail::describe(status), header.task_id());
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
