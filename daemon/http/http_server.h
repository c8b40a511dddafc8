#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
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
struct HttpRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;
  bool accepts_gzip = false;
};

/// What a handler answers. For HEAD the server sends the headers of `body` but not the body.
struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

/// Serves registered routes over HTTP/1.1 with libmicrohttpd, one daemon per listen address.
///
/// Every connection gets its own thread (at most `max_connections` per listen address), so idle,
/// half-open or slow clients and slow handlers hold up only their own connection: a scrape is
/// answered while they wait (until `connection_timeout_seconds` closes idle ones).
///
/// With a web config (Options::web, from `--web.config.file`), every listen address serves HTTPS
/// only (libmicrohttpd's GnuTLS support): a plain HTTP request to it fails the TLS handshake and
/// is not answered. Client certificates are asked for, required and verified as
/// `client_auth_type` says, during the handshake; each request checks the result again and
/// answers 403 if a certificate that is required (or sent, with VerifyClientCertIfGiven) did not
/// verify. With `basic_auth_users`, every path (also unknown ones) needs a valid user and password:
/// otherwise 401 with `WWW-Authenticate: Basic realm="kpulse"` (BasicAuthUsers: one bcrypt per
/// request, unknown users included).
///
/// Only GET and HEAD are served (other methods get 405 with `Allow: GET, HEAD`); an unknown
/// path gets 404. A body over 1 KiB is gzip-compressed when the client accepts gzip.
///
/// Thread safety: Route() and Start() are called from one thread during start-up. Handlers run
/// concurrently on libmicrohttpd threads and must be thread-safe; an exception escaping a handler
/// is caught, logged with spdlog and answered with 500. libmicrohttpd's own error log goes to
/// spdlog as well.
///
/// Ownership: the server owns its listening sockets and daemons; the destructor stops them and
/// waits for running handlers to return. Non-copyable and non-movable (daemons hold `this`).
class HttpServer {
 public:
  struct Options {
    std::vector<ListenAddress> listen;
    unsigned connection_timeout_seconds = 10;  // Idle time after which a connection is closed.
    unsigned max_connections = 64;             // Per listen address; extra ones are closed.
    WebConfig web;  // TLS and basic auth; the default is plain HTTP without authentication.
  };

  explicit HttpServer(Options options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  HttpServer(HttpServer&&) = delete;
  HttpServer& operator=(HttpServer&&) = delete;

  /// Serves `handler` for requests whose path equals `path` exactly; a second call for the same
  /// path replaces the handler. Throws std::logic_error after Start().
  void Route(std::string path, HttpHandler handler);

  /// Binds every listen address and starts serving. All or nothing: on failure nothing is left
  /// listening and std::runtime_error says which address failed and why, in one line, e.g.
  /// "cannot listen on [::1]:10136: Address already in use". Throws std::logic_error if called
  /// twice.
  void Start();

  /// The bound port of each listen address, in listen order (the real port when 0 was asked
  /// for); empty before Start().
  std::vector<uint16_t> BoundPorts() const;

 private:
  void Stop();

  Options options_;
  // What request handling reads (routes, the authentication policy); defined in the .cpp.
  std::unique_ptr<detail::HttpServerState> state_;
  std::vector<MHD_Daemon*> daemons_;
  std::vector<uint16_t> ports_;
  bool started_ = false;
};

}  // namespace kpulse
