// HttpServer with TLS and basic auth (a web config), driven by the real curl binary. Certificates
// are made by openssl for each suite run (test_pki.h).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "http/http_server.h"
#include "http/listen_address.h"
#include "http/web_config.h"
#include "test_pki.h"

namespace kpulse {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class HttpTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = new test::TestPki(); }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }

  // Starts a server for `web_yaml` on 127.0.0.1 with /metrics answering "page\n".
  void Start(const std::string& web_yaml) {
    HttpServer::Options options;
    auto address = ParseListenAddress("127.0.0.1:0");
    ASSERT_TRUE(address.has_value());
    options.listen.push_back(*address);
    options.web = ParseWebConfig(web_yaml, (pki_->dir() / "web.yml").string());
    server_ = std::make_unique<HttpServer>(std::move(options));
    server_->Route("/metrics", [](const HttpRequest&) {
      return HttpResponse{200, "text/plain", "page\n"};
    });
    server_->Start();
    port_ = server_->BoundPorts().at(0);
  }

  std::string Url(const std::string& scheme, const std::string& path = "/metrics") const {
    return scheme + "://127.0.0.1:" + std::to_string(port_) + path;
  }

  // curl over https, trusting the test CA, plus `args`.
  test::CurlResult Https(std::vector<std::string> args, const std::string& path = "/metrics") {
    args.insert(args.begin(), {"--cacert", pki_->ca_cert().string()});
    return test::Curl(args, Url("https", path));
  }

  std::vector<std::string> ClientCert() const {
    return {"--cert", pki_->client_cert().string(), "--key", pki_->client_key().string()};
  }
  std::vector<std::string> RogueCert() const {
    return {"--cert", pki_->rogue_cert().string(), "--key", pki_->rogue_key().string()};
  }

  static std::string TlsYaml(const std::string& extra = "") {
    return "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + extra;
  }
  static std::string VerifyYaml(const std::string& auth_type) {
    return TlsYaml("  client_ca_file: ca.crt\n  client_auth_type: " + auth_type + "\n");
  }

  static test::TestPki* pki_;
  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
};

test::TestPki* HttpTlsTest::pki_ = nullptr;

// The status of a curl call, with what curl said when there was none.
#define EXPECT_STATUS(result, expected)  \
  EXPECT_EQ((result).status, (expected)) \
      << "curl exit " << (result).exit_code << ": " << (result).error

TEST_F(HttpTlsTest, LibmicrohttpdHasTls) {
  EXPECT_EQ(MHD_is_feature_supported(MHD_FEATURE_TLS), MHD_YES);
}

TEST_F(HttpTlsTest, CurlWithTheCaCertificateGetsThePage) {
  Start(TlsYaml());
  const test::CurlResult result = Https({});
  EXPECT_EQ(result.exit_code, 0) << result.error;
  EXPECT_STATUS(result, 200);
  EXPECT_EQ(result.body, "page\n");
}

TEST_F(HttpTlsTest, CurlWithoutTheCaRefusesTheServer) {
  Start(TlsYaml());
  const test::CurlResult result = test::Curl({}, Url("https"));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_EQ(result.status, 0);
}

TEST_F(HttpTlsTest, PlainHttpToTheTlsPortIsRefused) {
  Start(TlsYaml());
  const test::CurlResult result = test::Curl({}, Url("http"));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_EQ(result.status, 0) << "an HTTP answer on the TLS port: " << result.headers;
  EXPECT_EQ(result.body, "");

  // And on a raw socket: no byte of HTTP comes back, the connection is closed.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port_);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string reply;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0)
    reply.append(buffer, static_cast<size_t>(n));
  close(fd);
  EXPECT_EQ(n, 0) << "the server should close the connection, not leave it open";
  EXPECT_THAT(reply, Not(HasSubstr("HTTP/")));
  EXPECT_THAT(reply, Not(HasSubstr("page")));
}

TEST_F(HttpTlsTest, RequireAndVerifyClientCertNeedsACertificateFromTheCa) {
  Start(VerifyYaml("RequireAndVerifyClientCert"));
  const test::CurlResult none = Https({});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_EQ(none.status, 0) << "served without a client certificate";
  const test::CurlResult good = Https(ClientCert());
  EXPECT_STATUS(good, 200);
  EXPECT_EQ(good.body, "page\n");
  const test::CurlResult rogue = Https(RogueCert());
  EXPECT_NE(rogue.exit_code, 0);
  EXPECT_EQ(rogue.status, 0) << "served with a certificate of another CA";
  // The server's own certificate is from the CA but not for client authentication.
  EXPECT_EQ(
      Https({"--cert", pki_->server_cert().string(), "--key", pki_->server_key().string()}).status,
      0);
}

TEST_F(HttpTlsTest, VerifyClientCertIfGivenAcceptsNoneOrAGoodOne) {
  Start(VerifyYaml("VerifyClientCertIfGiven"));
  EXPECT_STATUS(Https({}), 200);
  EXPECT_STATUS(Https(ClientCert()), 200);
  const test::CurlResult rogue = Https(RogueCert());
  EXPECT_EQ(rogue.status, 0) << "served with a certificate of another CA";
}

TEST_F(HttpTlsTest, RequireAnyClientCertNeedsACertificateButDoesNotVerifyIt) {
  Start(TlsYaml("  client_auth_type: RequireAnyClientCert\n"));
  EXPECT_EQ(Https({}).status, 0) << "served without a client certificate";
  EXPECT_STATUS(Https(RogueCert()), 200);
}

TEST_F(HttpTlsTest, RequestClientCertAcceptsAnything) {
  Start(TlsYaml("  client_auth_type: RequestClientCert\n"));
  EXPECT_STATUS(Https({}), 200);
  EXPECT_STATUS(Https(RogueCert()), 200);
}

TEST_F(HttpTlsTest, MinVersionTls13RefusesTls12Clients) {
  Start(TlsYaml("  min_version: TLS13\n"));
  EXPECT_EQ(Https({"--tls-max", "1.2"}).status, 0);
  EXPECT_STATUS(Https({"--tlsv1.3"}), 200);
}

TEST_F(HttpTlsTest, MinVersionTls12AcceptsTls12AndTls13) {
  Start(TlsYaml());
  EXPECT_STATUS(Https({"--tls-max", "1.2"}), 200);
  EXPECT_STATUS(Https({"--tlsv1.3"}), 200);
}

std::string UsersYaml() {
  static const std::string yaml =
      "basic_auth_users:\n  prometheus: " + test::BcryptHash("scrape-secret", 4) +
      "\n  alice: " + test::BcryptHash("wonderland", 4) + "\n";
  return yaml;
}

TEST_F(HttpTlsTest, BasicAuthOverTls) {
  Start(TlsYaml() + UsersYaml());
  const test::CurlResult none = Https({});
  EXPECT_STATUS(none, 401);
  EXPECT_THAT(none.headers, HasSubstr("WWW-Authenticate: Basic realm=\"kpulse\""));
  EXPECT_THAT(none.body, Not(HasSubstr("page")));
  EXPECT_STATUS(Https({"-u", "prometheus:wrong"}), 401);
  EXPECT_STATUS(Https({"-u", "mallory:scrape-secret"}), 401);
  EXPECT_STATUS(Https({"-u", "alice:scrape-secret"}), 401);
  const test::CurlResult right = Https({"-u", "prometheus:scrape-secret"});
  EXPECT_STATUS(right, 200);
  EXPECT_EQ(right.body, "page\n");
  EXPECT_STATUS(Https({"-u", "alice:wonderland"}), 200);
}

TEST_F(HttpTlsTest, BasicAuthComesBeforeRouting) {
  Start(UsersYaml());
  // Without credentials an unknown path is 401 too: nothing about the routes is told.
  EXPECT_STATUS(test::Curl({}, Url("http", "/no-such-path")), 401);
  EXPECT_STATUS(test::Curl({"-u", "alice:wonderland"}, Url("http", "/no-such-path")), 404);
  EXPECT_STATUS(test::Curl({"-X", "POST", "-u", "alice:nope"}, Url("http")), 401);
}

TEST_F(HttpTlsTest, BasicAuthWithoutTlsWorksToo) {
  Start(UsersYaml());
  EXPECT_STATUS(test::Curl({}, Url("http")), 401);
  EXPECT_STATUS(test::Curl({"-u", "alice:wrong"}, Url("http")), 401);
  EXPECT_STATUS(test::Curl({"-u", "alice:wonderland"}, Url("http")), 200);
  EXPECT_STATUS(test::Curl({"-I", "-u", "alice:wonderland"}, Url("http")), 200);
}

TEST_F(HttpTlsTest, ClientCertificateAndBasicAuthAreBothRequired) {
  Start(VerifyYaml("RequireAndVerifyClientCert") + UsersYaml());
  std::vector<std::string> cert_and_user = ClientCert();
  cert_and_user.insert(cert_and_user.end(), {"-u", "alice:wonderland"});
  EXPECT_STATUS(Https(cert_and_user), 200);
  EXPECT_STATUS(Https(ClientCert()), 401);
  EXPECT_EQ(Https({"-u", "alice:wonderland"}).status, 0);
}

TEST_F(HttpTlsTest, ServesIpv6OverTls) {
  HttpServer::Options options;
  options.listen.push_back(*ParseListenAddress("[::1]:0"));
  options.web = ParseWebConfig(TlsYaml(), (pki_->dir() / "web.yml").string());
  HttpServer server(std::move(options));
  server.Route("/metrics", [](const HttpRequest&) {
    return HttpResponse{200, "text/plain", "v6"};
  });
  server.Start();
  const test::CurlResult result =
      test::Curl({"--cacert", pki_->ca_cert().string()},
                 "https://[::1]:" + std::to_string(server.BoundPorts().at(0)) + "/metrics");
  EXPECT_STATUS(result, 200);
  EXPECT_EQ(result.body, "v6");
}

}  // namespace
}  // namespace kpulse
