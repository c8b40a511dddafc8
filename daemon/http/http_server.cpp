#include "http/http_server.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "http/basic_auth.h"

namespace kpulse {

namespace detail {

using Clock = std::chrono::steady_clock;

struct RouteEntry {
  HttpHandler handler;
  RouteOptions options;
  std::atomic<unsigned> running{0};  // Handlers of this route running now.
};

struct HttpServerState;

// One accepted connection, from libmicrohttpd's STARTED notification to its CLOSED one (its
// "socket context").
struct ConnectionState {
  int fd = -1;
  bool over_limit = false;               // Beyond max_connections: answered 503, then closed.
  std::atomic<bool> in_request = false;  // A complete request is in, not answered yet.
  // By when the next complete request must be in (steady clock ticks).
  std::atomic<Clock::rep> deadline{0};
};

// One listen address: its daemon's connections, for the limit and the request deadline.
struct Listener {
  HttpServerState* server = nullptr;
  std::mutex mutex;  // Guards `connections`; never held while calling into libmicrohttpd.
  std::set<ConnectionState*> connections;
};

// A request whose handler runs on a thread of its own while its connection is suspended.
// Exactly one of the handler thread (kDone) or Stop() (kAbandoned) answers it and resumes the
// connection, under `mutex`; the access handler then queues `response`. It stays in the
// server's `pending` set until libmicrohttpd reports the request completed (answer sent or
// connection broken), so Stop() can let the answers go out before closing the connections.
struct Pending {
  enum class Phase { kRunning, kDone, kAbandoned };
  std::mutex mutex;
  Phase phase = Phase::kRunning;
  MHD_Connection* connection = nullptr;
  std::string label;  // Handler label for the counters.
  HttpResponse response;
  std::vector<std::pair<std::string, std::string>> headers;
};

// libmicrohttpd's per-request state ("con_cls").
struct RequestContext {
  std::shared_ptr<Pending> pending;  // Null for requests answered at once.
  bool queued = false;               // The answer has been queued.
};

// Everything request handling reads and counts. Routes and the policy are fixed once Start()
// runs; the rest is guarded as noted.
struct HttpServerState {
  std::map<std::string, RouteEntry> routes;
  bool tls = false;
  ClientAuth client_auth = ClientAuth::kNoClientCert;
  BasicAuthUsers users;
  unsigned max_connections = 0;
  std::chrono::seconds timeout{10};
  std::vector<std::unique_ptr<Listener>> listeners;

  std::stop_source stop;  // Requested by Stop(); handed to handlers as HttpRequest::stop.
  std::mutex mutex;       // Guards stopping, pending and handlers_running.
  std::condition_variable handlers_done;  // Notified when either of the two below shrinks.
  bool stopping = false;
  std::set<std::shared_ptr<Pending>> pending;  // Handed to a handler thread, not completed yet.
  unsigned handlers_running = 0;

  mutable std::mutex stats_mutex;  // Guards requests and latency of `stats`.
  HttpStats stats;
  std::atomic<uint64_t> rejected_connections = 0;
  std::atomic<uint64_t> timed_out_connections = 0;
  std::atomic<uint64_t> accepted_connections = 0;
  std::atomic<uint64_t> open_connections = 0;

  // Closes connections past their request deadline; runs from Start() to Stop().
  std::jthread sweeper;

  void Count(const std::string& label, unsigned status, std::optional<double> seconds) {
    const std::lock_guard lock(stats_mutex);
    ++stats.requests[{label, status}];
    if (seconds) {
      HttpStats::Latency& latency = stats.latency[label];
      ++latency.count;
      latency.sum_seconds += *seconds;
    }
  }
};

}  // namespace detail

namespace {

using detail::Clock;
using detail::ConnectionState;
using detail::HttpServerState;
using detail::Listener;
using detail::Pending;
using detail::RequestContext;
using detail::RouteEntry;
using Headers = std::vector<std::pair<std::string, std::string>>;

// Bodies up to this size are sent as they are: compressing them saves little.
constexpr size_t kGzipMinimumBytes = 1024;

constexpr int kListenBacklog = 128;

// How long a connection over max_connections may take to send its request (and get 503).
constexpr unsigned kOverLimitTimeoutSeconds = 1;
// How long Stop() gives the event loops to send the answers of the last requests once every one
// is answered, beyond `grace` if that is spent: a page of a few MB to a local scraper takes
// milliseconds.
constexpr std::chrono::milliseconds kStopFlushTime{250};

// How often the request deadline is checked.
constexpr auto kSweepInterval = std::chrono::milliseconds(200);

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// The q value of one Accept-Encoding element's parameters ("q=0.5"); 1 when absent.
double QualityOf(std::string_view parameters) {
  while (!parameters.empty()) {
    const size_t semicolon = parameters.find(';');
    std::string_view parameter = Trim(parameters.substr(0, semicolon));
    parameters =
        semicolon == std::string_view::npos ? std::string_view() : parameters.substr(semicolon + 1);
    const size_t equals = parameter.find('=');
    if (equals == std::string_view::npos) continue;
    if (!EqualsIgnoreCase(Trim(parameter.substr(0, equals)), "q")) continue;
    const std::string value(Trim(parameter.substr(equals + 1)));
    char* end = nullptr;
    const double q = std::strtod(value.c_str(), &end);
    return end == value.c_str() ? 0.0 : q;
  }
  return 1.0;
}

// RFC 9110 section 12.5.3: gzip is acceptable if listed (or covered by "*") with q > 0.
bool AcceptsGzip(std::string_view accept_encoding) {
  std::optional<double> gzip;
  std::optional<double> wildcard;
  while (!accept_encoding.empty()) {
    const size_t comma = accept_encoding.find(',');
    const std::string_view element = accept_encoding.substr(0, comma);
    accept_encoding =
        comma == std::string_view::npos ? std::string_view() : accept_encoding.substr(comma + 1);
    const size_t semicolon = element.find(';');
    const std::string_view coding = Trim(element.substr(0, semicolon));
    const double q =
        semicolon == std::string_view::npos ? 1.0 : QualityOf(element.substr(semicolon + 1));
    if (EqualsIgnoreCase(coding, "gzip") || EqualsIgnoreCase(coding, "x-gzip")) {
      gzip = q;
    } else if (coding == "*") {
      wildcard = q;
    }
  }
  if (gzip) return *gzip > 0;
  return wildcard && *wildcard > 0;
}

// gzip (RFC 1952) of `input`, or nullopt if zlib fails.
std::optional<std::string> Gzip(std::string_view input) {
  if (input.size() > UINT_MAX) return std::nullopt;
  z_stream stream{};
  constexpr int kGzipWindowBits = 15 + 16;  // 32 KiB window, gzip header and trailer.
  constexpr int kMemoryLevel = 8;
  // Fastest level: on a 100k-series page (11 MiB) level 6 takes 47 ms, level 1 20 ms for a body
  // 25% larger (598 KiB instead of 477 KiB), and Prometheus asks for gzip on every scrape.
  if (deflateInit2(&stream, Z_BEST_SPEED, Z_DEFLATED, kGzipWindowBits, kMemoryLevel,
                   Z_DEFAULT_STRATEGY) != Z_OK) {
    return std::nullopt;
  }
  std::string output(deflateBound(&stream, static_cast<uLong>(input.size())), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  stream.avail_in = static_cast<uInt>(input.size());
  stream.next_out = reinterpret_cast<Bytef*>(output.data());
  stream.avail_out = static_cast<uInt>(output.size());
  const int result = deflate(&stream, Z_FINISH);
  output.resize(stream.total_out);
  deflateEnd(&stream);
  if (result != Z_STREAM_END) return std::nullopt;
  return output;
}

// True for libmicrohttpd messages about one client's behaviour (hang-ups, malformed requests),
// which any exporter on a network sees routinely. A port scan must not flood the log at warning
// level, so these go to debug; everything else (limits, resources, start-up) is a warning.
bool IsAboutOneClient(std::string_view message) {
  constexpr std::string_view kClientPhrases[] = {
      "remote",  // "closed by remote side", "forcibly closed by remote peer"
      "Socket has been disconnected",
      "Connection socket is closed",
      "Failed to send",
      "Error processing request",
      "`Host' header",
      "`Content-Length' header",
      "handshake",  // TLS: plain HTTP to the TLS port, a certificate refused, a scanner
  };
  return std::any_of(std::begin(kClientPhrases), std::end(kClientPhrases),
                     [message](std::string_view phrase) {
                       return message.find(phrase) != std::string_view::npos;
                     });
}

void LogFromMicrohttpd(void* /*cls*/, const char* format, va_list arguments) {
  char message[512];
  std::vsnprintf(message, sizeof(message), format, arguments);
  std::string_view text(message);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  spdlog::log(IsAboutOneClient(text) ? spdlog::level::debug : spdlog::level::warn,
              "libmicrohttpd: {}", text);
}

MHD_Result CollectQueryArgument(void* cls, MHD_ValueKind /*kind*/, const char* key,
                                const char* value) {
  auto* query = static_cast<std::map<std::string, std::string>*>(cls);
  query->emplace(key, value != nullptr ? value : "");
  return MHD_YES;
}

HttpResponse PlainResponse(unsigned status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

HttpResponse RunHandler(const HttpHandler& handler, const HttpRequest& request) {
  try {
    return handler(request);
  } catch (const std::exception& e) {
    spdlog::error("HTTP handler for {} {} failed: {}", request.method, request.path, e.what());
  } catch (...) {
    spdlog::error("HTTP handler for {} {} failed with a non-standard exception", request.method,
                  request.path);
  }
  return PlainResponse(500, "internal server error\n");
}

void CompressIfWorthIt(const HttpRequest& request, HttpResponse& response, Headers& headers) {
  if (response.body.size() <= kGzipMinimumBytes) return;
  // The representation depends on Accept-Encoding from this size on, whatever this client sent.
  headers.emplace_back(MHD_HTTP_HEADER_VARY, MHD_HTTP_HEADER_ACCEPT_ENCODING);
  if (!request.accepts_gzip) return;
  auto compressed = Gzip(response.body);
  if (!compressed) {
    spdlog::warn("gzip failed for {}; sending the body uncompressed", request.path);
    return;
  }
  response.body = std::move(*compressed);
  headers.emplace_back(MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
}

MHD_Result Send(MHD_Connection* connection, const HttpResponse& response, const Headers& headers) {
  // MUST_COPY: libmicrohttpd keeps its own copy, so `response` may die when we return.
  MHD_Response* reply = MHD_create_response_from_buffer(
      response.body.size(), const_cast<char*>(response.body.data()), MHD_RESPMEM_MUST_COPY);
  if (reply == nullptr) return MHD_NO;
  MHD_Result result =
      MHD_add_response_header(reply, MHD_HTTP_HEADER_CONTENT_TYPE, response.content_type.c_str());
  for (const auto& [name, value] : headers) {
    if (result == MHD_YES) result = MHD_add_response_header(reply, name.c_str(), value.c_str());
  }
  if (result == MHD_YES) result = MHD_queue_response(connection, response.status, reply);
  MHD_destroy_response(reply);
  return result;
}

gnutls_session_t TlsSession(MHD_Connection* connection) {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  return info == nullptr ? nullptr : static_cast<gnutls_session_t>(info->tls_session);
}

// Whether the client certificate of `session` satisfies `client_auth`: present when required,
// and when verified (VerifyClientCertIfGiven, RequireAndVerifyClientCert) signed by a trusted CA
// (client_ca_file), within its validity, and for client authentication (extended key usage
// clientAuth, or none: the check Go's crypto/tls makes).
bool ClientCertificateAccepted(gnutls_session_t session, ClientAuth client_auth) {
  if (client_auth == ClientAuth::kNoClientCert || client_auth == ClientAuth::kRequestClientCert) {
    return true;
  }
  if (session == nullptr) return false;
  unsigned count = 0;
  const bool sent = gnutls_certificate_get_peers(session, &count) != nullptr && count > 0;
  if (client_auth == ClientAuth::kRequireAnyClientCert) return sent;
  if (!sent) return client_auth == ClientAuth::kVerifyClientCertIfGiven;
  gnutls_typed_vdata_st purpose{};
  purpose.type = GNUTLS_DT_KEY_PURPOSE_OID;
  purpose.data = reinterpret_cast<unsigned char*>(const_cast<char*>(GNUTLS_KP_TLS_WWW_CLIENT));
  unsigned status = 0;
  return gnutls_certificate_verify_peers(session, &purpose, 1, &status) == GNUTLS_E_SUCCESS &&
         status == 0;
}

// GnuTLS verify callbacks, run during the handshake once the client's certificate is in: a
// non-zero return fails the handshake (as Go's crypto/tls does), so nothing is served.
int VerifyClientCertIfGiven(gnutls_session_t session) {
  return ClientCertificateAccepted(session, ClientAuth::kVerifyClientCertIfGiven) ? 0 : -1;
}
int VerifyRequiredClientCert(gnutls_session_t session) {
  return ClientCertificateAccepted(session, ClientAuth::kRequireAndVerifyClientCert) ? 0 : -1;
}

// Before the TLS handshake of a new connection, tells GnuTLS whether to ask for a client
// certificate, to require one, and how to verify it. A certificate that is required but missing,
// or that does not verify, then fails the handshake.
void SetUpClientCertificates(gnutls_session_t session, ClientAuth client_auth) {
  switch (client_auth) {
    case ClientAuth::kNoClientCert:
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_IGNORE);
      break;
    case ClientAuth::kRequestClientCert:
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUEST);
      break;
    case ClientAuth::kRequireAnyClientCert:
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
      break;
    case ClientAuth::kVerifyClientCertIfGiven:
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUEST);
      gnutls_session_set_verify_function(session, &VerifyClientCertIfGiven);
      break;
    case ClientAuth::kRequireAndVerifyClientCert:
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_function(session, &VerifyRequiredClientCert);
      break;
  }
}

// The user name and password of a Basic Authorization header, if there is one; copied, since
// checking them (bcrypt) happens on the handler thread.
struct Credentials {
  std::string user;
  std::string password;
  bool present = false;

  Credentials() = default;
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;
  Credentials(Credentials&&) = default;
  Credentials& operator=(Credentials&&) = default;
  ~Credentials() { explicit_bzero(password.data(), password.size()); }
};

Credentials BasicCredentials(MHD_Connection* connection) {
  Credentials credentials;
  char* password = nullptr;
  char* user = MHD_basic_auth_get_username_password(connection, &password);
  if (user != nullptr && password != nullptr) {
    credentials.user = user;
    credentials.password = password;
    credentials.present = true;
  }
  if (password != nullptr) {
    explicit_bzero(password, std::strlen(password));
    MHD_free(password);
  }
  if (user != nullptr) MHD_free(user);
  return credentials;
}

bool IsGetOrHead(const std::string& method) {
  return method == MHD_HTTP_METHOD_GET || method == MHD_HTTP_METHOD_HEAD;
}

// The answer when authentication (if any) passed: routing and method policy, then the handler.
HttpResponse Dispatch(const RouteEntry* route, const HttpRequest& request, Headers& headers) {
  if (route == nullptr) return PlainResponse(404, "not found\n");
  if (!IsGetOrHead(request.method)) {
    headers.emplace_back(MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    return PlainResponse(405, "method not allowed\n");
  }
  return RunHandler(route->handler, request);
}

HttpResponse Unauthorized(Headers& headers) {
  headers.emplace_back(MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"kpulse\"");
  return PlainResponse(401, "unauthorized\n");
}

HttpResponse Unavailable(std::string body, Headers& headers) {
  headers.emplace_back(MHD_HTTP_HEADER_RETRY_AFTER, "1");
  return PlainResponse(503, std::move(body));
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

ConnectionState* SocketContext(MHD_Connection* connection) {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return info == nullptr ? nullptr : static_cast<ConnectionState*>(info->socket_context);
}

void SetDeadline(ConnectionState& connection, std::chrono::seconds timeout) {
  connection.deadline = (Clock::now() + timeout).time_since_epoch().count();
}

// libmicrohttpd's connection notification (cls: the Listener). STARTED: counts the connection
// against the limit, starts its request deadline and, before the TLS handshake, sets up the
// client certificate policy. CLOSED: forgets it.
void OnConnection(void* cls, MHD_Connection* connection, void** socket_context,
                  MHD_ConnectionNotificationCode code) {
  auto& listener = *static_cast<Listener*>(cls);
  HttpServerState& state = *listener.server;
  if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    auto* closed = static_cast<ConnectionState*>(*socket_context);
    if (closed == nullptr) return;
    {
      const std::lock_guard lock(listener.mutex);
      listener.connections.erase(closed);
    }
    --state.open_connections;
    delete closed;
    *socket_context = nullptr;
    return;
  }
  if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
  auto* started = new (std::nothrow) ConnectionState;
  if (started == nullptr) return;  // Served, but neither limited nor swept.
  const MHD_ConnectionInfo* fd =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  started->fd = fd == nullptr ? -1 : fd->connect_fd;
  SetDeadline(*started, state.timeout);
  try {
    const std::lock_guard lock(listener.mutex);
    listener.connections.insert(started);
    started->over_limit = listener.connections.size() > state.max_connections;
  } catch (...) {
    delete started;
    return;
  }
  ++state.open_connections;
  ++state.accepted_connections;
  *socket_context = started;
  if (started->over_limit) {
    ++state.rejected_connections;
    SetDeadline(*started, std::chrono::seconds(kOverLimitTimeoutSeconds));
    MHD_set_connection_option(connection, MHD_CONNECTION_OPTION_TIMEOUT, kOverLimitTimeoutSeconds);
  }
  if (state.tls) {
    gnutls_session_t session = TlsSession(connection);
    if (session != nullptr) SetUpClientCertificates(session, state.client_auth);
    // Without a session the per-request check refuses every request.
  }
}

// libmicrohttpd's request-completed notification (cls: the state): the answer went out or the
// connection broke. Frees the request's state and restarts the connection's request deadline.
void OnRequestCompleted(void* cls, MHD_Connection* connection, void** request_state,
                        MHD_RequestTerminationCode /*code*/) {
  auto& state = *static_cast<HttpServerState*>(cls);
  auto* context = static_cast<RequestContext*>(*request_state);
  if (context != nullptr && context->pending != nullptr) {
    const std::lock_guard lock(state.mutex);
    state.pending.erase(context->pending);
    state.handlers_done.notify_all();
  }
  delete context;
  *request_state = nullptr;
  if (ConnectionState* open = SocketContext(connection)) {
    SetDeadline(*open,
                open->over_limit ? std::chrono::seconds(kOverLimitTimeoutSeconds) : state.timeout);
    open->in_request = false;
  }
}

// Closes connections whose next complete request (header and any body) is overdue. libmicrohttpd's
// own timeout only closes connections that send nothing for that long, so a client trickling one
// header byte at a time would hold its connection forever. shutdown() (not close(): libmicrohttpd
// owns the descriptor) makes libmicrohttpd see the end of the stream and close the connection
// itself; the CLOSED notification takes the listener's lock, so a descriptor is never shut down
// after its close.
void SweepOverdueConnections(HttpServerState& state, const std::stop_token& stop) {
  std::mutex mutex;
  std::condition_variable_any wake;
  std::unique_lock lock(mutex);
  for (;;) {
    wake.wait_for(lock, stop, kSweepInterval, [] { return false; });  // Sleeps, or stops.
    if (stop.stop_requested()) return;
    const Clock::rep now = Clock::now().time_since_epoch().count();
    for (const auto& listener : state.listeners) {
      const std::lock_guard connections_lock(listener->mutex);
      for (ConnectionState* connection : listener->connections) {
        if (connection->in_request || connection->fd < 0 || connection->deadline > now) continue;
        connection->deadline = Clock::time_point::max().time_since_epoch().count();
        shutdown(connection->fd, SHUT_RDWR);
        ++state.timed_out_connections;
      }
    }
  }
}

// The handler thread of one request: authentication, routing, the handler and gzip, then the
// answer goes back to the (suspended) connection unless Stop() answered it already.
// `took_slot`: the request holds one of the route's max_concurrent slots.
void RunPending(std::shared_ptr<HttpServerState> state, std::shared_ptr<Pending> pending,
                const RouteEntry* route, bool took_slot, HttpRequest request,
                Credentials credentials, Clock::time_point start) {
  Headers headers;
  HttpResponse response;
  try {
    if (!state->users.empty() &&
        !(credentials.present && state->users.Check(credentials.user, credentials.password))) {
      response = Unauthorized(headers);
    } else {
      response = Dispatch(route, request, headers);
    }
    CompressIfWorthIt(request, response, headers);
  } catch (const std::exception& e) {
    spdlog::error("HTTP request {} {} failed: {}", request.method, request.path, e.what());
    headers.clear();
    response = PlainResponse(500, "internal server error\n");
  }
  if (took_slot) --const_cast<RouteEntry*>(route)->running;
  {
    const std::lock_guard lock(pending->mutex);
    if (pending->phase == Pending::Phase::kRunning) {
      state->Count(pending->label, response.status, SecondsSince(start));
      pending->response = std::move(response);
      pending->headers = std::move(headers);
      pending->phase = Pending::Phase::kDone;
      MHD_resume_connection(pending->connection);
    }
  }
  const std::lock_guard lock(state->mutex);
  --state->handlers_running;
  state->handlers_done.notify_all();
}

// Hands `request` to a handler thread and suspends its connection. False (nothing started) if
// the server is stopping or no thread could be started.
bool StartPending(const std::shared_ptr<HttpServerState>& state, MHD_Connection* connection,
                  RequestContext& context, std::string label, const RouteEntry* route,
                  bool took_slot, HttpRequest request, Credentials credentials,
                  Clock::time_point start) {
  auto pending = std::make_shared<Pending>();
  pending->connection = connection;
  pending->label = std::move(label);
  request.stop = state->stop.get_token();
  const std::lock_guard lock(state->mutex);
  if (state->stopping) return false;
  // Holding pending->mutex until the thread runs keeps it from resuming the connection before
  // it is suspended.
  const std::lock_guard pending_lock(pending->mutex);
  try {
    std::thread(&RunPending, state, pending, route, took_slot, std::move(request),
                std::move(credentials), start)
        .detach();
  } catch (const std::system_error& e) {
    spdlog::warn("HTTP: cannot start a handler thread: {}", e.what());
    return false;
  }
  state->pending.insert(pending);
  ++state->handlers_running;
  MHD_suspend_connection(connection);
  context.pending = std::move(pending);
  return true;
}

// libmicrohttpd's access handler (cls: a shared_ptr to the state). The first call, once the
// headers are in, only sets up the request's state: libmicrohttpd closes the connection after
// an answer queued that early. Any body is read and discarded (no route takes one). Once the
// request is in, the answer comes at once (limits, TLS, unknown paths without basic auth), or a
// handler thread starts and the connection is suspended; the call after the thread resumed it
// queues the answer. Nothing may throw out of here into C code.
MHD_Result HandleRequest(void* cls, MHD_Connection* connection, const char* url, const char* method,
                         const char* /*version*/, const char* /*upload_data*/,
                         size_t* upload_data_size, void** request_state) {
  const auto& state = *static_cast<const std::shared_ptr<HttpServerState>*>(cls);
  if (*request_state == nullptr) {
    *request_state = new (std::nothrow) RequestContext;
    return *request_state == nullptr ? MHD_NO : MHD_YES;
  }
  auto& context = *static_cast<RequestContext*>(*request_state);
  if (*upload_data_size != 0) {
    *upload_data_size = 0;  // Discard a body we did not ask for.
    return MHD_YES;
  }
  if (context.queued) return MHD_YES;
  if (context.pending != nullptr) {
    const std::lock_guard lock(context.pending->mutex);
    if (context.pending->phase == Pending::Phase::kRunning) return MHD_YES;  // Not resumed yet.
    context.queued = true;
    return Send(connection, context.pending->response, context.pending->headers);
  }
  const Clock::time_point start = Clock::now();
  try {
    ConnectionState* open = SocketContext(connection);
    if (open != nullptr) open->in_request = true;

    HttpRequest request;
    request.method = method;
    request.path = url;
    MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND, &CollectQueryArgument,
                              &request.query);
    const char* accept_encoding =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING);
    request.accepts_gzip = accept_encoding != nullptr && AcceptsGzip(accept_encoding);

    const auto found = state->routes.find(request.path);
    const RouteEntry* route = found == state->routes.end() ? nullptr : &found->second;
    std::string label = route == nullptr ? "other" : request.path;
    Headers headers;
    std::optional<HttpResponse> now;  // An answer that needs no handler thread.
    bool took_slot = false;
    if (open != nullptr && open->over_limit) {
      headers.emplace_back(MHD_HTTP_HEADER_CONNECTION, "close");
      now = Unavailable("too many connections\n", headers);
    } else if (state->tls &&
               !ClientCertificateAccepted(TlsSession(connection), state->client_auth)) {
      // The handshake enforced the client certificate policy already (OnConnection); checking
      // again means no request is served on a connection where that did not happen.
      now = PlainResponse(403, "client certificate required\n");
    } else if (state->users.empty() && (route == nullptr || !IsGetOrHead(request.method))) {
      now = Dispatch(route, request, headers);  // 404 or 405: no handler runs.
    } else if (route != nullptr && route->options.max_concurrent != 0 &&
               IsGetOrHead(request.method)) {
      auto& running = const_cast<RouteEntry*>(route)->running;
      if (running.fetch_add(1) >= route->options.max_concurrent) {
        --running;
        now = Unavailable("too many concurrent requests for " + request.path + "\n", headers);
      } else {
        took_slot = true;
      }
    }
    if (!now) {
      // Authentication (bcrypt) runs on the handler thread too, and comes before routing
      // there, so that nothing (not even which paths exist) is told to a client that is not
      // allowed in.
      Credentials credentials;
      if (!state->users.empty()) credentials = BasicCredentials(connection);
      if (StartPending(state, connection, context, label, route, took_slot, std::move(request),
                       std::move(credentials), start)) {
        return MHD_YES;
      }
      if (took_slot) --const_cast<RouteEntry*>(route)->running;
      headers.clear();
      headers.emplace_back(MHD_HTTP_HEADER_CONNECTION, "close");
      now = Unavailable("shutting down\n", headers);
    }
    CompressIfWorthIt(request, *now, headers);
    state->Count(label, now->status, SecondsSince(start));
    context.queued = true;
    return Send(connection, *now, headers);
  } catch (const std::exception& e) {
    spdlog::error("HTTP request {} {} failed: {}", method, url, e.what());
  } catch (...) {
    spdlog::error("HTTP request {} {} failed", method, url);
  }
  return MHD_NO;  // Closes the connection.
}

std::runtime_error ListenError(const ListenAddress& address, int error) {
  return std::runtime_error("cannot listen on " + address.text + ": " + std::strerror(error));
}

// A bound, listening, non-blocking socket for `address`. We bind it ourselves rather than let
// libmicrohttpd do it (MHD_OPTION_SOCK_ADDR), because libmicrohttpd does not report errno when
// it fails, and the message must say why.
int OpenListenSocket(const ListenAddress& address) {
  const int fd = socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ListenError(address, errno);
  const int on = 1;
  // Set IPV6_V6ONLY either way: the default comes from a sysctl (net.ipv6.bindv6only).
  const int v6only = address.dual_stack ? 0 : 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
      (address.family() == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) != 0) ||
      bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 ||
      listen(fd, kListenBacklog) != 0) {
    const int error = errno;
    close(fd);
    throw ListenError(address, error);
  }
  return fd;
}

uint16_t LocalPort(int fd) {
  sockaddr_storage local{};
  socklen_t length = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) != 0) return 0;
  if (local.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
}

// The GnuTLS priority string for the lowest accepted version (the rest is GnuTLS's NORMAL set).
const char* TlsPriorities(TlsVersion min_version) {
  return min_version == TlsVersion::kTls13 ? "NORMAL:-VERS-ALL:+VERS-TLS1.3"
                                           : "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
}

// libmicrohttpd options for TLS (none without it), ending in MHD_OPTION_END. The strings stay
// owned by `tls`, which must outlive MHD_start_daemon.
std::vector<MHD_OptionItem> TlsOptions(const std::optional<TlsServerConfig>& tls) {
  std::vector<MHD_OptionItem> items;
  const auto add = [&items](MHD_OPTION option, intptr_t value, const void* pointer) {
    items.push_back(MHD_OptionItem{option, value, const_cast<void*>(pointer)});
  };
  if (tls) {
    add(MHD_OPTION_HTTPS_MEM_CERT, 0, tls->cert_pem.c_str());
    add(MHD_OPTION_HTTPS_MEM_KEY, 0, tls->key_pem.c_str());
    add(MHD_OPTION_HTTPS_PRIORITIES, 0, TlsPriorities(tls->min_version));
    if (!tls->client_ca_pem.empty()) {
      add(MHD_OPTION_HTTPS_MEM_TRUST, 0, tls->client_ca_pem.c_str());
    }
  }
  add(MHD_OPTION_END, 0, nullptr);
  return items;
}

}  // namespace

HttpServer::HttpServer(Options options)
    : options_(std::move(options)), state_(std::make_shared<HttpServerState>()) {
  state_->tls = options_.web.tls.has_value();
  if (state_->tls) state_->client_auth = options_.web.tls->client_auth;
  state_->users = BasicAuthUsers(options_.web.basic_auth_users);
  state_->max_connections = std::max(options_.max_connections, 1u);
  state_->timeout = std::chrono::seconds(std::max(options_.connection_timeout_seconds, 1u));
}

HttpServer::~HttpServer() {
  Stop();
  // Handlers use objects the server does not own (collectors, probes), which die after it: wait
  // for every one, also one that ignores HttpRequest::stop.
  std::unique_lock lock(state_->mutex);
  while (!state_->handlers_done.wait_for(lock, std::chrono::seconds(5),
                                         [this] { return state_->handlers_running == 0; })) {
    spdlog::warn("HTTP: waiting for {} handler(s) that ignore the stop request",
                 state_->handlers_running);
  }
}

void HttpServer::Route(std::string path, HttpHandler handler, RouteOptions options) {
  if (started_) throw std::logic_error("HttpServer::Route called after Start");
  RouteEntry& entry = state_->routes[std::move(path)];
  entry.handler = std::move(handler);
  entry.options = options;
}

void HttpServer::Start() {
  if (started_) throw std::logic_error("HttpServer::Start called twice");
  started_ = true;
  const std::optional<TlsServerConfig>& tls = options_.web.tls;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    throw std::runtime_error("TLS is configured in " + options_.web.source +
                             " but this libmicrohttpd was built without TLS support");
  }
  std::vector<MHD_OptionItem> tls_options = TlsOptions(tls);
  // Connections over max_connections are taken in up to this reserve, to be answered 503.
  const unsigned reserve = std::max(state_->max_connections / 4, 16u);
  for (const ListenAddress& address : options_.listen) {
    int fd = -1;
    try {
      fd = OpenListenSocket(address);
      state_->listeners.push_back(std::make_unique<Listener>());
    } catch (...) {
      if (fd >= 0) close(fd);
      Stop();
      throw;
    }
    Listener* listener = state_->listeners.back().get();
    listener->server = state_.get();
    const uint16_t port = LocalPort(fd);

    // epoll event loops, without a thread per connection: idle and slow clients cost no thread.
    // Handlers run on threads of their own while their connection is suspended (HandleRequest),
    // so a slow one never blocks a loop and the other connections on it.
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (tls) flags |= MHD_USE_TLS;
    if (address.family() == AF_INET6) {
      flags |= address.dual_stack ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    }
    auto* logger = &LogFromMicrohttpd;
    auto* on_connection = &OnConnection;
    auto* on_completed = &OnRequestCompleted;
    // clang-format off
    MHD_Daemon* daemon = MHD_start_daemon(
        flags, 0, nullptr, nullptr, &HandleRequest, &state_,
        // First, so that every message from option parsing goes through it too.
        MHD_OPTION_EXTERNAL_LOGGER, logger, nullptr,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_THREAD_POOL_SIZE, std::max(options_.poll_threads, 1u),
        MHD_OPTION_CONNECTION_TIMEOUT, state_->timeout.count() > 0
            ? static_cast<unsigned>(state_->timeout.count()) : 1u,
        MHD_OPTION_CONNECTION_LIMIT, state_->max_connections + reserve,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, listener,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, state_.get(),
        MHD_OPTION_ARRAY, tls_options.data(),
        MHD_OPTION_END);
    // clang-format on
    if (daemon == nullptr) {
      // Whether libmicrohttpd already closed `fd` on this path is version-dependent; leaking one
      // descriptor on a fatal start-up error is safer than closing someone else's.
      Stop();
      throw std::runtime_error("cannot listen on " + address.text +
                               ": libmicrohttpd failed to start (see the log above)");
    }
    daemons_.push_back(daemon);  // The daemon now owns `fd` and closes it when stopped.
    ports_.push_back(port);
  }
  HttpServerState* state = state_.get();
  state_->sweeper =
      std::jthread([state](const std::stop_token& stop) { SweepOverdueConnections(*state, stop); });
  if (tls || !state_->users.empty()) {
    spdlog::info(
        "HTTP: {}; {} ({})",
        tls ? "TLS only, from " + std::string(ToString(tls->min_version)) +
                  ", client certificates: " + std::string(ToString(tls->client_auth))
            : std::string("plain HTTP (no TLS)"),
        state_->users.empty()
            ? std::string("no basic auth")
            : "basic auth for " + std::to_string(options_.web.basic_auth_users.size()) + " user(s)",
        options_.web.source);
  }
}

std::vector<uint16_t> HttpServer::BoundPorts() const { return ports_; }

HttpStats HttpServer::Stats() const {
  HttpStats stats;
  {
    const std::lock_guard lock(state_->stats_mutex);
    stats = state_->stats;
  }
  stats.rejected_connections = state_->rejected_connections;
  stats.timed_out_connections = state_->timed_out_connections;
  stats.accepted_connections = state_->accepted_connections;
  stats.open_connections = state_->open_connections;
  return stats;
}

bool HttpServer::Stop(std::chrono::milliseconds grace) {
  if (stopped_) return true;
  stopped_ = true;
  state_->stop.request_stop();
  const Clock::time_point stop_deadline = Clock::now() + grace;
  std::unique_lock lock(state_->mutex);
  state_->stopping = true;  // New requests get 503 (StartPending).
  const bool all_returned = state_->handlers_done.wait_until(
      lock, stop_deadline, [this] { return state_->handlers_running == 0; });
  // libmicrohttpd must not be stopped with a connection suspended: answer the requests whose
  // handlers are still running and resume their connections.
  for (const std::shared_ptr<Pending>& pending : state_->pending) {
    const std::lock_guard pending_lock(pending->mutex);
    if (pending->phase != Pending::Phase::kRunning) continue;
    pending->phase = Pending::Phase::kAbandoned;
    pending->headers = {{MHD_HTTP_HEADER_CONNECTION, "close"}};
    pending->response = PlainResponse(503, "shutting down\n");
    state_->Count(pending->label, 503, std::nullopt);
    MHD_resume_connection(pending->connection);
  }
  if (!all_returned) {
    spdlog::warn("HTTP: {} handler(s) still running {} ms after the stop request",
                 state_->handlers_running, grace.count());
  }
  // Every pending request is answered now; let the event loops send the answers before the
  // daemons close the connections (a scrape that finished must not lose its page).
  const bool all_sent =
      state_->handlers_done.wait_until(lock, std::max(stop_deadline, Clock::now() + kStopFlushTime),
                                       [this] { return state_->pending.empty(); });
  if (!all_sent) {
    spdlog::warn("HTTP: {} answer(s) not sent when the server stopped", state_->pending.size());
  }
  lock.unlock();
  if (state_->sweeper.joinable()) {
    state_->sweeper.request_stop();
    state_->sweeper.join();
  }
  for (MHD_Daemon* daemon : daemons_) MHD_stop_daemon(daemon);
  daemons_.clear();
  ports_.clear();
  return all_returned;
}

}  // namespace kpulse
