// Connection's retry policy (see connection.h): which failures are retried, re-Join or are final
// (classify), the backoff wait before a retry with its logging, the give-up after retry_timeout_s
// and the heartbeat-interval cap (wait_before_retry), and the reset after a success
// (note_success); also how a failure is described (detail::describe, detail::tls_hint). The channel
// and the RPCs themselves are in connection.cc.
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <mutex>

#include "client/connection.h"
#include "client/connection_detail.h"
#include "common/wire/grpc_status.h"

namespace fedtail::client {

namespace {

int64_t steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string seconds_text(double s) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f s", s);
  return buffer;
}

}  // namespace

namespace detail {

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

}  // namespace detail

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
  const std::string hint =
      joined_once_.load() ? "" : detail::tls_hint(status, options_.tls.ca.empty());
  const std::string reason = what + ": " + detail::describe(status) + hint;
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

}  // namespace fedtail::client
