// HttpDashboard: a small read-only HTTP server (Debian's cpp-httplib) on its own thread that shows
// a run live (fedtail-coordinator --http, fedtail-sim --http):
//   GET /             the dashboard page (coordinator/dashboard/index.html, built in; no external
//                     resources), which polls the two JSON endpoints every second;
//   GET /api/status   LiveStatus::status_json();
//   GET /api/metrics  the metrics lines so far, a JSON array (?since=N: from index N on);
//   GET /metrics      Prometheus text format 0.0.4 (coordinator/prometheus_text.h).
// HEAD is answered like GET without a body; any other method gets 405, unknown paths 404.
//
// Access: by default the server must listen on a loopback address, and then answers only requests
// whose Host header names a loopback host (so that a web page of another site cannot read it
// through DNS rebinding). With a token file, every request must carry
// `Authorization: Bearer <token>` (the page also accepts `?token=<token>` and sends the header on
// its own requests), compared in constant time, else 401; any address is then allowed.
//
// Thread-safety: create() and the destructor from one thread; requests are served on the server's
// threads, which read the LiveStatus (thread-safe). The destructor stops the server and joins its
// threads.
#ifndef FEDTAIL_COORDINATOR_HTTP_DASHBOARD_H_
#define FEDTAIL_COORDINATOR_HTTP_DASHBOARD_H_

#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/base/status.h"
#include "coordinator/live_status.h"

namespace httplib {
class Server;
}

namespace fedtail::coordinator {

// The dashboard page (coordinator/dashboard/index.html), compiled in (dashboard_page.cc is
// generated from it at build time).
std::string_view dashboard_page_html();

class HttpDashboard {
 public:
  // Listens on `listen` ("HOST:PORT" or "[V6]:PORT"; port 0 picks a free port) and starts serving
  // `live` (shared: it may outlive the runs it shows). `token_file`: the bearer token's file (at
  // least 32 bytes, one trailing newline stripped; `fedtail-certs secret` makes one); "" = none.
  // Errors name the flag: kInvalidArgument (--http not HOST:PORT), kFailedPrecondition (--http
  // not a loopback address and no --http-token-file), the errors of read_secret_file
  // (--http-token-file), kUnavailable (--http: the address cannot be bound).
  static Result<std::unique_ptr<HttpDashboard>> create(const std::string& listen,
                                                       const std::string& token_file,
                                                       std::shared_ptr<LiveStatus> live);
  // Stops the server and joins its thread.
  ~HttpDashboard();
  HttpDashboard(const HttpDashboard&) = delete;
  HttpDashboard& operator=(const HttpDashboard&) = delete;

  // The bound port.
  int port() const { return port_; }
  // The page's address, e.g. "http://127.0.0.1:8080/".
  const std::string& url() const { return url_; }

 private:
  HttpDashboard(std::shared_ptr<LiveStatus> live, std::string token);
  void install_handlers();

  // Constant after create().
  const std::shared_ptr<LiveStatus> live_;
  const std::string token_;  // "" = no token required
  int port_ = 0;
  std::string url_;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;  // runs the server's accept loop
};

}  // namespace fedtail::coordinator

#endif  // FEDTAIL_COORDINATOR_HTTP_DASHBOARD_H_
