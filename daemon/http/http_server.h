#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "http/listen_address.h"
#include "http/web_config.h"

struct MHD_Daemon;

namespace kpulse {

namespace detail {
struct HttpServerState;
}  // namespace detail

/// One HTTP request as a handler sees it. `path` is the decoded path without the query string;
/// `query` holds the decoded query parameters (the first value wins when a name repeats, a name
/// without `=` maps to ""). `accepts_gzip` says whether Accept-Encoding allows gzip; the server
/// compresses on its own, so handlers only need it for their own decisions.
///
/// `stop` is requested when the server stops (HttpServer::Stop(), the destructor). A handler
/// that can take long (it sleeps or waits, like /debug/offcpu?seconds=N) must watch it and
/// return early, e.g. by waiting with std::condition_variable_any::wait_for(lock, stop, ...)
/// instead of sleeping; what it returns then is sent if the connection is still open (after
/// Stop()'s grace time it is answered 503 instead). Outside the server (a default HttpRequest)
/// it is never requested.
struct HttpRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;
  bool accepts_gzip = false;
  std::stop_token stop{};
};

/// What a handler answers. For HEAD the server sends the headers of `body` but not the body.
struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

/// How the server runs one route's handler.
struct RouteOptions {
  /// Requests of this route whose handler may run at once; a request beyond it is answered
  /// 503 ("Retry-After: 1") at once, without running the handler. 0: unlimited.
  unsigned max_concurrent = 0;
};

/// A snapshot of the server's counters since Start(), for the self-metrics collector.
struct HttpStats {
  struct Latency {
    uint64_t count = 0;
    double sum_seconds = 0;  // From the request header being in to the answer being ready.
  };
  /// Answered requests by {handler, status}. `handler` is the route path, or "other" for a
  /// path no route serves, so the set is bounded by the routes and the statuses used.
  std::map<std::pair<std::string, unsigned>, uint64_t> requests;
  /// Per handler (route path or "other"), for the requests counted in `requests`.
  std::map<std::string, Latency> latency;
  /// Connections over `max_connections` on their listen address: answered 503 if they send a
  /// request within 1 s, closed otherwise.
  uint64_t rejected_connections = 0;
  /// Connections closed because no complete request came within `connection_timeout_seconds`
  /// of connecting or of the previous answer (idle keep-alive connections included).
  uint64_t timed_out_connections = 0;
  uint64_t accepted_connections = 0;  // Every connection taken in, over the limit or not.
  uint64_t open_connections = 0;      // Now, on all listen addresses.
};

/// Serves registered routes over HTTP/1.1 with libmicrohttpd, one daemon per listen address.
///
/// Connections: each daemon runs `poll_threads` epoll event loops, which hold any number of
/// connections without a thread each; idle, half-open and slow-header clients cost a socket and
/// a little memory, not a thread. Connections are kept alive between requests (HTTP/1.1, unless
/// the client asks to close). A connection must send each complete request (header and any
/// body) within `connection_timeout_seconds` of connecting or of its previous answer, however
/// slowly it trickles bytes, and is closed otherwise. Up to
/// `max_connections` per listen address are served; the next ones (a reserve of a quarter as
/// many, at least 16) get 503 with "Connection: close" for their first request, or are closed
/// after 1 s without one; beyond that reserve new connections wait in the listen backlog.
///
/// Handlers never run on the event loops: every request that reaches a handler runs it on a
/// thread of its own while its connection is suspended, so a slow handler (/debug/offcpu sleeps
/// up to 60 s) holds up only its own request. RouteOptions::max_concurrent bounds one route's
/// running handlers; requests beyond it get 503 at once, so a flood of them neither delays a
/// scrape nor grows without bound. (That 503 comes before basic auth, which then also bounds
/// the bcrypt work such a flood can cause.)
///
/// With a web config (Options::web, from `--web.config.file`), every listen address serves HTTPS
/// only (libmicrohttpd's GnuTLS support): a plain HTTP request to it fails the TLS handshake and
/// is not answered. Client certificates are asked for, required and verified as
/// `client_auth_type` says, during the handshake; each request checks the result again and
/// answers 403 if a certificate that is required (or sent, with VerifyClientCertIfGiven) did not
/// verify. With `basic_auth_users`, every path (also unknown ones) needs a valid user and password:
/// otherwise 401 with `WWW-Authenticate: Basic realm="kpulse"` (BasicAuthUsers: one bcrypt per
/// request, unknown users included, on the request's handler thread).
///
/// Only GET and HEAD are served (other methods get 405 with `Allow: GET, HEAD`); an unknown
/// path gets 404. A body over 1 KiB is gzip-compressed when the client accepts gzip.
///
/// Thread safety: Route() and Start() are called from one thread during start-up. Handlers run
/// concurrently on the server's handler threads and must be thread-safe; an exception escaping a
/// handler is caught, logged with spdlog and answered with 500. libmicrohttpd's own error log
/// goes to spdlog as well. Stats() and BoundPorts() may be called from any thread after Start();
/// Stop() from the thread that owns the server.
///
/// Ownership: the server owns its listening sockets, daemons and handler threads. Stop() (also
/// run by the destructor) requests `HttpRequest::stop` of every running handler and closes every
/// connection; the destructor then waits for every handler to return, however long, since
/// handlers use objects the server does not own. Non-copyable and non-movable.
class HttpServer {
 public:
  struct Options {
    std::vector<ListenAddress> listen;
    /// Idle keep-alive connections, and connections that have not sent a complete request in
    /// this time, are closed.
    unsigned connection_timeout_seconds = 10;
    unsigned max_connections = 512;  // Per listen address; beyond it 503 (see the class).
    unsigned poll_threads = 2;       // Event-loop threads per listen address.
    WebConfig web;  // TLS and basic auth; the default is plain HTTP without authentication.
  };

  explicit HttpServer(Options options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  HttpServer(HttpServer&&) = delete;
  HttpServer& operator=(HttpServer&&) = delete;

  /// Serves `handler` for requests whose path equals `path` exactly; a second call for the same
  /// path replaces the handler and its options. Throws std::logic_error after Start().
  void Route(std::string path, HttpHandler handler, RouteOptions options = {});

  /// Binds every listen address and starts serving. All or nothing: on failure nothing is left
  /// listening and std::runtime_error says which address failed and why, in one line, e.g.
  /// "cannot listen on [::1]:10136: Address already in use". Throws std::logic_error if called
  /// twice.
  void Start();

  /// The bound port of each listen address, in listen order (the real port when 0 was asked
  /// for); empty before Start() and after Stop().
  std::vector<uint16_t> BoundPorts() const;

  /// The counters so far; thread-safe, cheap (a copy of a map of a few dozen entries).
  HttpStats Stats() const;

  /// Stops serving, in bounded time: requests `HttpRequest::stop` of every running handler,
  /// answers new requests 503, waits up to `grace` for the running handlers to return, then
  /// answers the requests of those still running 503 (their handlers' answers are dropped when
  /// they come), lets the answers go out (until `grace` ends, or 250 ms if it has), closes
  /// every connection and stops listening. Returns whether every handler had returned within
  /// `grace`. Later calls do nothing and return true.
  bool Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(1000));

 private:
  Options options_;
  // What request handling reads and counts; shared with the handler threads, which may outlive
  // a Stop(). Defined in the .cpp.
  std::shared_ptr<detail::HttpServerState> state_;
  std::vector<MHD_Daemon*> daemons_;
  std::vector<uint16_t> ports_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace kpulse
