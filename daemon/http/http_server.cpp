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
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "http/basic_auth.h"

namespace kpulse {

using Routes = std::map<std::string, HttpHandler>;

namespace detail {

// Everything request handling reads; fixed once Start() runs.
struct HttpServerState {
  Routes routes;
  bool tls = false;
  ClientAuth client_auth = ClientAuth::kNoClientCert;
  BasicAuthUsers users;
};

}  // namespace detail

namespace {

using detail::HttpServerState;
using Headers = std::vector<std::pair<std::string, std::string>>;

// Bodies up to this size are sent as they are: compressing them saves little.
constexpr size_t kGzipMinimumBytes = 1024;

constexpr int kListenBacklog = 128;

// Marks a request that has been answered, for libmicrohttpd's per-request state pointer.
char answered_marker;

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

// Routing and method policy; adds any extra headers the answer needs to `headers`.
HttpResponse Dispatch(const Routes& routes, const HttpRequest& request, Headers& headers) {
  const auto route = routes.find(request.path);
  if (route == routes.end()) return PlainResponse(404, "not found\n");
  if (request.method != MHD_HTTP_METHOD_GET && request.method != MHD_HTTP_METHOD_HEAD) {
    headers.emplace_back(MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    return PlainResponse(405, "method not allowed\n");
  }
  return RunHandler(route->second, request);
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

// libmicrohttpd's connection notification: before the TLS handshake of a new connection, tell
// GnuTLS whether to ask for a client certificate, to require one, and how to verify it. A
// certificate that is required but missing, or that does not verify, then fails the handshake.
void OnConnectionStarted(void* cls, MHD_Connection* connection, void** /*socket_context*/,
                         MHD_ConnectionNotificationCode code) {
  if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
  const auto* state = static_cast<const HttpServerState*>(cls);
  gnutls_session_t session = TlsSession(connection);
  if (session == nullptr) return;  // Checked again (and refused) per request.
  switch (state->client_auth) {
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

// Basic auth (RFC 7617) against the configured users; true when none are configured.
bool Authenticated(MHD_Connection* connection, const BasicAuthUsers& users) {
  if (users.empty()) return true;
  char* password = nullptr;
  char* user = MHD_basic_auth_get_username_password(connection, &password);
  bool ok = false;
  if (user != nullptr && password != nullptr) ok = users.Check(user, password);
  if (password != nullptr) {
    explicit_bzero(password, std::strlen(password));
    MHD_free(password);
  }
  if (user != nullptr) MHD_free(user);
  return ok;
}

// libmicrohttpd's access handler. It answers on the first call, once the headers are in: no
// route takes a request body, and libmicrohttpd closes the connection after the reply if the
// client sent one. Nothing may throw out of here into C code.
MHD_Result HandleRequest(void* cls, MHD_Connection* connection, const char* url, const char* method,
                         const char* /*version*/, const char* /*upload_data*/,
                         size_t* upload_data_size, void** request_state) {
  if (*request_state == &answered_marker) {
    *upload_data_size = 0;  // Discard a body we did not ask for.
    return MHD_YES;
  }
  *request_state = &answered_marker;
  try {
    HttpRequest request;
    request.method = method;
    request.path = url;
    MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND, &CollectQueryArgument,
                              &request.query);
    const char* accept_encoding =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING);
    request.accepts_gzip = accept_encoding != nullptr && AcceptsGzip(accept_encoding);

    const auto& state = *static_cast<const HttpServerState*>(cls);
    Headers headers;
    HttpResponse response;
    // Authentication comes before routing, so that nothing (not even which paths exist) is
    // told to a client that is not allowed in.
    // The handshake enforced the client certificate policy already (OnConnectionStarted);
    // checking again means no request is served on a connection where that did not happen.
    if (state.tls && !ClientCertificateAccepted(TlsSession(connection), state.client_auth)) {
      response = PlainResponse(403, "client certificate required\n");
    } else if (!Authenticated(connection, state.users)) {
      response = PlainResponse(401, "unauthorized\n");
      headers.emplace_back(MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"kpulse\"");
    } else {
      response = Dispatch(state.routes, request, headers);
    }
    CompressIfWorthIt(request, response, headers);
    return Send(connection, response, headers);
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
std::vector<MHD_OptionItem> TlsOptions(const std::optional<TlsServerConfig>& tls,
                                       HttpServerState* state) {
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
    add(MHD_OPTION_NOTIFY_CONNECTION, reinterpret_cast<intptr_t>(&OnConnectionStarted), state);
  }
  add(MHD_OPTION_END, 0, nullptr);
  return items;
}

}  // namespace

HttpServer::HttpServer(Options options)
    : options_(std::move(options)), state_(std::make_unique<HttpServerState>()) {
  state_->tls = options_.web.tls.has_value();
  if (state_->tls) state_->client_auth = options_.web.tls->client_auth;
  state_->users = BasicAuthUsers(options_.web.basic_auth_users);
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(std::string path, HttpHandler handler) {
  if (started_) throw std::logic_error("HttpServer::Route called after Start");
  state_->routes.insert_or_assign(std::move(path), std::move(handler));
}

void HttpServer::Start() {
  if (started_) throw std::logic_error("HttpServer::Start called twice");
  started_ = true;
  const std::optional<TlsServerConfig>& tls = options_.web.tls;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    throw std::runtime_error("TLS is configured in " + options_.web.source +
                             " but this libmicrohttpd was built without TLS support");
  }
  std::vector<MHD_OptionItem> tls_options = TlsOptions(tls, state_.get());
  for (const ListenAddress& address : options_.listen) {
    int fd = -1;
    try {
      fd = OpenListenSocket(address);
    } catch (...) {
      Stop();
      throw;
    }
    const uint16_t port = LocalPort(fd);

    // A thread per connection: a slow handler (/debug/offcpu?seconds=N sleeps N seconds) or a
    // slow client then holds up only its own connection, never a scrape. Idle connections are
    // bounded by the connection limit and closed after the timeout. (An epoll thread pool blocked
    // every connection of a thread behind one slow handler: HttpServer.SlowHandlersDoNot...)
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (tls) flags |= MHD_USE_TLS;
    if (address.family() == AF_INET6) {
      flags |= address.dual_stack ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    }
    auto* logger = &LogFromMicrohttpd;
    // clang-format off
    MHD_Daemon* daemon = MHD_start_daemon(
        flags, 0, nullptr, nullptr, &HandleRequest, state_.get(),
        // First, so that every message from option parsing goes through it too.
        MHD_OPTION_EXTERNAL_LOGGER, logger, nullptr,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_TIMEOUT, options_.connection_timeout_seconds,
        MHD_OPTION_CONNECTION_LIMIT, std::max(options_.max_connections, 1u),
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

void HttpServer::Stop() {
  for (MHD_Daemon* daemon : daemons_) MHD_stop_daemon(daemon);
  daemons_.clear();
  ports_.clear();
}

}  // namespace kpulse
