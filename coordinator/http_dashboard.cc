#include "coordinator/http_dashboard.h"

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <utility>

#include "common/security/crypto.h"
#include "common/security/tls.h"
#include "coordinator/prometheus_text.h"

namespace fedtail::coordinator {
namespace {

// Server threads: the page makes two requests a second, a Prometheus server one per scrape.
constexpr size_t kServerThreads = 4;
// An idle keep-alive connection holds a server thread this long.
constexpr time_t kKeepAliveSeconds = 2;
constexpr time_t kReadTimeoutSeconds = 5;
// Requests carry no body: any payload is refused past this size.
constexpr size_t kMaxPayloadBytes = 1024;
// How long create() waits for the accept loop to run.
constexpr std::chrono::seconds kStartTimeout{10};

constexpr char kJsonType[] = "application/json; charset=utf-8";

// "HOST:PORT" or "[V6]:PORT" -> host (without brackets) and port; false when malformed.
bool split_host_port(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) return false;
  std::string h = listen.substr(0, colon);
  if (h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') return false;
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string::npos) {
    return false;  // an IPv6 address needs brackets
  }
  const std::string p = listen.substr(colon + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) return false;
  const int value = std::atoi(p.c_str());
  if (value > 65535) return false;
  *host = h;
  *port = value;
  return true;
}

bool has_bearer(const httplib::Request& request, const std::string& token) {
  const std::string header = request.get_header_value("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (header.size() > kBearer.size() && header.compare(0, kBearer.size(), kBearer) == 0) {
    return constant_time_equal(std::string_view(header).substr(kBearer.size()), token);
  }
  return false;
}

}  // namespace

HttpDashboard::HttpDashboard(std::shared_ptr<LiveStatus> live, std::string token)
    : live_(std::move(live)), token_(std::move(token)) {}

HttpDashboard::~HttpDashboard() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

Result<std::unique_ptr<HttpDashboard>> HttpDashboard::create(const std::string& listen,
                                                             const std::string& token_file,
                                                             std::shared_ptr<LiveStatus> live) {
  FEDTAIL_CHECK(live != nullptr);
  std::string host;
  int port = 0;
  if (!split_host_port(listen, &host, &port)) {
    return Status::InvalidArgument("--http: expected HOST:PORT or [IPV6]:PORT (got \"" + listen +
                                   "\")");
  }
  std::string token;
  if (!token_file.empty()) {
    Result<std::string> read = read_secret_file(token_file);
    if (!read.ok()) return read.status().with_context("--http-token-file");
    token = std::move(read).value();
  } else if (!is_loopback_address(listen)) {
    return Status::FailedPrecondition(
        "--http " + listen +
        ": not a loopback address, and without --http-token-file anyone who reaches it could "
        "read the run's status; give --http-token-file FILE (requests then need "
        "\"Authorization: Bearer <token>\"), or listen on 127.0.0.1");
  }
  std::unique_ptr<HttpDashboard> dashboard(new HttpDashboard(std::move(live), std::move(token)));
  dashboard->server_ = std::make_unique<httplib::Server>();
  httplib::Server& server = *dashboard->server_;
  server.new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  server.set_keep_alive_timeout(kKeepAliveSeconds);
  server.set_read_timeout(kReadTimeoutSeconds, 0);
  server.set_write_timeout(kReadTimeoutSeconds, 0);
  server.set_payload_max_length(kMaxPayloadBytes);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let another process bind
  // the same port and take part of the requests.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  dashboard->install_handlers();

  const int bound =
      port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return Status::Unavailable("--http: cannot listen on " + listen +
                               " (address in use or not local?)");
  }
  dashboard->port_ = bound;
  const std::string url_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  dashboard->url_ = "http://" + url_host + ":" + std::to_string(bound) + "/";

  // stop() only ends an accept loop that is running: wait for it to run, so that the destructor
  // cannot miss it.
  auto ended = std::make_shared<std::atomic<bool>>(false);
  dashboard->thread_ = std::thread([&server, ended] {
    if (!server.listen_after_bind()) spdlog::warn("dashboard: the HTTP server stopped on an error");
    ended->store(true);
  });
  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  while (!server.is_running() && !ended->load()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Unavailable("--http: the HTTP server on " + listen + " did not start");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (ended->load()) {
    return Status::Unavailable("--http: the HTTP server on " + listen + " ended at once");
  }
  spdlog::info("dashboard: {}{} (JSON: /api/status, /api/metrics; Prometheus: /metrics)",
               dashboard->url_, dashboard->token_.empty() ? "" : " (bearer token required)");
  return dashboard;
}

void HttpDashboard::install_handlers() {
  httplib::Server& server = *server_;
  server.set_default_headers({{"Cache-Control", "no-store"},
                              {"X-Content-Type-Options", "nosniff"},
                              {"Referrer-Policy", "no-referrer"},
                              {"X-Frame-Options", "DENY"}});
  // Method, host and token checks, before any route.
  server.set_pre_routing_handler([this](const httplib::Request& request,
                                        httplib::Response& response) {
    if (request.method != "GET" && request.method != "HEAD") {
      response.status = 405;
      response.set_header("Allow", "GET, HEAD");
      response.set_content("method not allowed: the dashboard is read-only\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (token_.empty()) {
      const std::string host = request.get_header_value("Host");
      if (!host.empty() && !is_loopback_address(host)) {
        response.status = 403;
        response.set_content("forbidden: the Host header must name a loopback host\n",
                             "text/plain");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    }
    // The page may carry the token in its URL (a browser cannot send a header when following a
    // link); everything else needs the header.
    const bool authorized =
        has_bearer(request, token_) ||
        (request.path == "/" && constant_time_equal(request.get_param_value("token"), token_));
    if (!authorized) {
      response.status = 401;
      response.set_header("WWW-Authenticate", "Bearer realm=\"fedtail\"");
      response.set_content("unauthorized: send \"Authorization: Bearer <token>\"\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  server.Get("/", [](const httplib::Request&, httplib::Response& response) {
    // Inline script and style only; the page talks to this server alone.
    response.set_header("Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; style-src "
                        "'unsafe-inline'; connect-src 'self'; img-src 'self' data:");
    const std::string_view page = dashboard_page_html();
    response.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  server.Get("/api/status", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(
        live_->status_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
        kJsonType);
  });
  server.Get("/api/metrics", [this](const httplib::Request& request, httplib::Response& response) {
    size_t since = 0;
    if (request.has_param("since")) {
      const std::string text = request.get_param_value("since");
      if (text.empty() || text.size() > 9 ||
          text.find_first_not_of("0123456789") != std::string::npos) {
        response.status = 400;
        response.set_content("since: expected a line index (0, 1, ...)\n", "text/plain");
        return;
      }
      since = static_cast<size_t>(std::atol(text.c_str()));
    }
    response.set_content(live_->metrics_json(since), kJsonType);
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(prometheus_text(live_->snapshot()), kPrometheusContentType);
  });
}

}  // namespace fedtail::coordinator
