// End to end: the built kpulse binary with --web.config.file (TLS, client certificates, basic
// auth), scraped with the real curl binary; and a bad web config refused at start.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../bpf/test_env.h"
#include "../unit/test_pki.h"

namespace kpulse {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// kpulse started as systemd would (NOTIFY_SOCKET) with `args`; killed and reaped on destruction.
class Kpulse {
 public:
  Kpulse(const fs::path& dir, std::vector<std::string> args) : log_(dir / "kpulse.log") {
    const fs::path socket_path = dir / "notify.sock";
    unlink(socket_path.c_str());
    notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
    if (bind(notify_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      throw std::runtime_error("bind notify socket: " + std::string(strerror(errno)));
    }
    const std::string notify = "NOTIFY_SOCKET=" + socket_path.string();
    args.insert(args.begin(), KPULSE_BINARY);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      putenv(const_cast<char*>(notify.c_str()));
      std::vector<char*> argv;
      for (auto& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Kpulse() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(notify_fd_);
  }

  /// The port in the next READY=1 status, or 0 (and a failure naming the log) if none comes in
  /// 20 s.
  uint16_t WaitReady() {
    const std::string ready = WaitFor("READY=1", 20s);
    std::smatch match;
    if (std::regex_search(ready, match, std::regex(R"(127\.0\.0\.1:(\d+))"))) {
      return static_cast<uint16_t>(std::stoi(match[1]));
    }
    ADD_FAILURE() << "no READY=1 naming a port; got '" << ready << "'; log:\n" << ReadFile(log_);
    return 0;
  }

  /// Sends SIGHUP, waits for RELOADING=1 and then READY=1; returns the port in that READY=1 (a
  /// reload that restarts the HTTP server re-binds port 0, so it may differ), or 0.
  uint16_t Reload() {
    kill(pid_, SIGHUP);
    const std::string reloading = WaitFor("RELOADING=1", 10s);
    if (reloading.empty()) {
      ADD_FAILURE() << "no RELOADING=1 after SIGHUP; log:\n" << ReadFile(log_);
      return 0;
    }
    EXPECT_THAT(reloading, ::testing::ContainsRegex("MONOTONIC_USEC=[0-9]+"));
    return WaitReady();
  }

  std::string log() const { return ReadFile(log_); }

 private:
  // The next datagram containing `needle` (earlier ones are dropped), or "" on timeout.
  std::string WaitFor(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd pfd{notify_fd_, POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      char buffer[4096];
      const ssize_t n = recv(notify_fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) continue;
      std::string message(buffer, static_cast<size_t>(n));
      if (message.find(needle) != std::string::npos) return message;
    }
    return "";
  }

  fs::path log_;
  int notify_fd_ = -1;
  pid_t pid_ = -1;
};

constexpr const char* kConfig =
    "http:\n"
    "  listen_addresses: [\"127.0.0.1:0\"]\n"
    "probes:\n"
    "  runqueue_latency:\n"
    "    enabled: false\n"
    "  offcpu:\n"
    "    enabled: false\n";

class WebConfigE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { KPULSE_REQUIRE_ROOT(); }

  fs::path Write(const std::string& name, const std::string& text) {
    const fs::path path = pki_.dir() / name;
    std::ofstream(path) << text;
    return path;
  }

  test::TestPki pki_;
};

TEST_F(WebConfigE2eTest, ServesMetricsOverTlsWithClientCertificateAndBasicAuth) {
  const fs::path config = Write("kpulse.yaml", kConfig);
  const fs::path web = Write("web.yml",
                             "tls_server_config:\n"
                             "  cert_file: server.crt\n"
                             "  key_file: server.key\n"
                             "  client_ca_file: ca.crt\n"
                             "  client_auth_type: RequireAndVerifyClientCert\n"
                             "basic_auth_users:\n"
                             "  prometheus: " +
                                 test::BcryptHash("scrape-secret", 10) + "\n");
  Kpulse kpulse(pki_.dir(), {"--config", config.string(), "--web.config.file", web.string()});
  const uint16_t port = kpulse.WaitReady();
  ASSERT_NE(port, 0);
  const std::string https = "https://127.0.0.1:" + std::to_string(port) + "/metrics";
  const std::string http = "http://127.0.0.1:" + std::to_string(port) + "/metrics";
  const std::vector<std::string> trusted = {"--cacert", pki_.ca_cert().string()};
  const std::vector<std::string> cert = {"--cacert", pki_.ca_cert().string(),
                                         "--cert",   pki_.client_cert().string(),
                                         "--key",    pki_.client_key().string()};
  const auto with = [](std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };

  const test::CurlResult ok = test::Curl(with(cert, {"-u", "prometheus:scrape-secret"}), https);
  EXPECT_EQ(ok.status, 200) << ok.error << "\n" << kpulse.log();
  EXPECT_THAT(ok.body, HasSubstr("kpulse_build_info{"));
  EXPECT_THAT(ok.body, HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"} 1"));

  const test::CurlResult wrong = test::Curl(with(cert, {"-u", "prometheus:wrong"}), https);
  EXPECT_EQ(wrong.status, 401);
  EXPECT_THAT(wrong.headers, HasSubstr("WWW-Authenticate: Basic realm=\"kpulse\""));
  EXPECT_THAT(wrong.body, Not(HasSubstr("kpulse_")));
  EXPECT_EQ(test::Curl(with(cert, {"-u", "nobody:scrape-secret"}), https).status, 401);
  EXPECT_EQ(test::Curl(cert, https).status, 401);

  const test::CurlResult no_cert =
      test::Curl(with(trusted, {"-u", "prometheus:scrape-secret"}), https);
  EXPECT_NE(no_cert.exit_code, 0);
  EXPECT_EQ(no_cert.status, 0) << "served without a client certificate";
  const test::CurlResult rogue =
      test::Curl(with(trusted, {"--cert", pki_.rogue_cert().string(), "--key",
                                pki_.rogue_key().string(), "-u", "prometheus:scrape-secret"}),
                 https);
  EXPECT_EQ(rogue.status, 0) << "served with a certificate of another CA";

  const test::CurlResult plain = test::Curl({"-u", "prometheus:scrape-secret"}, http);
  EXPECT_NE(plain.exit_code, 0);
  EXPECT_EQ(plain.status, 0) << "plain HTTP answered on the TLS port";
  EXPECT_THAT(plain.body, Not(HasSubstr("kpulse_")));

  EXPECT_THAT(kpulse.log(), HasSubstr("TLS only, from TLS12"));
}

std::string MetricsOverTls(uint16_t port) {
  return "https://127.0.0.1:" + std::to_string(port) + "/metrics";
}

std::vector<std::string> WithUser(std::vector<std::string> args, const std::string& user) {
  args.insert(args.end(), {"-u", user});
  return args;
}

// The lines of `text` that contain `needle`.
std::vector<std::string> LinesWith(const std::string& text, const std::string& needle) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) {
    if (line.find(needle) != std::string::npos) lines.push_back(line);
  }
  return lines;
}

constexpr const char* kTlsSection =
    "tls_server_config:\n"
    "  cert_file: server.crt\n"
    "  key_file: server.key\n";

// A bad web config on reload: one error line naming the file, line and field; the server goes on
// with the certificate and password it had; kpulse_config_last_reload_successful 0.
TEST_F(WebConfigE2eTest, BadWebConfigOnReloadKeepsServingWithTheOldOne) {
  const fs::path config = Write("kpulse.yaml", kConfig);
  const std::string users =
      "basic_auth_users:\n  prometheus: " + test::BcryptHash("scrape-secret", 10) + "\n";
  const fs::path web = Write("web.yml", kTlsSection + users);
  Kpulse kpulse(pki_.dir(), {"--config", config.string(), "--web.config.file", web.string()});
  ASSERT_NE(kpulse.WaitReady(), 0);

  // Line 4; exporter-toolkit knows TLS11, kpulse does not.
  Write("web.yml", kTlsSection + std::string("  min_version: TLS11\n") + users);
  const uint16_t port = kpulse.Reload();
  ASSERT_NE(port, 0);

  const std::string log = kpulse.log();
  EXPECT_THAT(LinesWith(log, "] [error] "),
              ::testing::ElementsAre(::testing::EndsWith(
                  "reload failed, the running configuration is kept: " + web.string() +
                  ":4:16: tls_server_config.min_version: must be one of TLS12, TLS13, got "
                  "\"TLS11\"")))
      << log;
  const std::vector<std::string> trusted = {"--cacert", pki_.ca_cert().string()};
  const test::CurlResult ok =
      test::Curl(WithUser(trusted, "prometheus:scrape-secret"), MetricsOverTls(port));
  EXPECT_EQ(ok.status, 200) << ok.error << "\n" << log;
  EXPECT_THAT(ok.body, HasSubstr("\nkpulse_config_last_reload_successful 0\n"));
  EXPECT_EQ(test::Curl(WithUser(trusted, "prometheus:wrong"), MetricsOverTls(port)).status, 401);
}

// A good reload with a web-config file restarts the server with it: the new password and the new
// certificate (of a new CA) are in use, the old ones no longer.
TEST_F(WebConfigE2eTest, ReloadPicksUpANewPasswordAndCertificate) {
  const fs::path config = Write("kpulse.yaml", kConfig);
  const fs::path web =
      Write("web.yml", kTlsSection + std::string("basic_auth_users:\n  prometheus: ") +
                           test::BcryptHash("password-a", 10) + "\n");
  const test::TestPki next;  // A new CA, and a server certificate and key it signed.
  Kpulse kpulse(pki_.dir(), {"--config", config.string(), "--web.config.file", web.string()});
  const uint16_t first_port = kpulse.WaitReady();
  ASSERT_NE(first_port, 0);
  const std::vector<std::string> old_ca = {"--cacert", pki_.ca_cert().string()};
  const test::CurlResult before =
      test::Curl(WithUser(old_ca, "prometheus:password-a"), MetricsOverTls(first_port));
  ASSERT_EQ(before.status, 200) << before.error << "\n" << kpulse.log();

  const std::string new_tls = "tls_server_config:\n  cert_file: " + next.server_cert().string() +
                              "\n  key_file: " + next.server_key().string() + "\n";
  Write("web.yml",
        new_tls + "basic_auth_users:\n  prometheus: " + test::BcryptHash("password-b", 10) + "\n");
  const uint16_t port = kpulse.Reload();
  ASSERT_NE(port, 0);
  const std::vector<std::string> new_ca = {"--cacert", next.ca_cert().string()};

  const test::CurlResult ok =
      test::Curl(WithUser(new_ca, "prometheus:password-b"), MetricsOverTls(port));
  EXPECT_EQ(ok.status, 200) << ok.error << "\n" << kpulse.log();
  EXPECT_THAT(ok.body, HasSubstr("\nkpulse_config_last_reload_successful 1\n"));
  const test::CurlResult old_password =
      test::Curl(WithUser(new_ca, "prometheus:password-a"), MetricsOverTls(port));
  EXPECT_EQ(old_password.status, 401) << old_password.error;
  EXPECT_THAT(old_password.body, Not(HasSubstr("kpulse_")));
  const test::CurlResult old_certificate =
      test::Curl(WithUser(old_ca, "prometheus:password-b"), MetricsOverTls(port));
  EXPECT_EQ(old_certificate.exit_code, 60)
      << "curl: peer certificate cannot be authenticated; got " << old_certificate.error;
  EXPECT_EQ(old_certificate.status, 0) << "the server still presents a certificate of the old CA";
  EXPECT_THAT(LinesWith(kpulse.log(), "] [error] "), ::testing::IsEmpty());
}

// Command line: no root needed.
TEST(KpulseWebConfigCommandLine, BadWebConfigIsOneLineAndExitCode2BeforeAnyProbe) {
  test::TestPki pki;
  const fs::path config = pki.dir() / "kpulse.yaml";
  std::ofstream(config) << kConfig;
  const fs::path web = pki.dir() / "web.yml";
  std::ofstream(web) << "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n";
  const std::string command = std::string(KPULSE_BINARY) + " --config " + config.string() +
                              " --web.config.file " + web.string();
  for (const std::string& run : {command, command + " --check-config " + config.string()}) {
    const test::CommandResult result = test::RunShell(run);
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_EQ(result.output,
              "kpulse: " + web.string() + ":2:14: tls_server_config.cert_file: cannot read '" +
                  (pki.dir() / "missing.crt").string() + "': No such file or directory\n");
  }
}

TEST(KpulseWebConfigCommandLine, CheckConfigValidatesTheWebConfigToo) {
  test::TestPki pki;
  const fs::path web = pki.dir() / "web.yml";
  std::ofstream(web) << "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
  const test::CommandResult result = test::RunShell(
      std::string(KPULSE_BINARY) +
      " --check-config " KPULSE_SOURCE_DIR "/config/kpulse.yaml --web.config.file=" + web.string());
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr(web.string() + ": OK"));
}

TEST(KpulseWebConfigCommandLine, UsageNamesTheFlag) {
  const test::CommandResult result = test::RunShell(std::string(KPULSE_BINARY) + " --help");
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("--web.config.file FILE"));
  const test::CommandResult missing =
      test::RunShell(std::string(KPULSE_BINARY) + " --web.config.file");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.output, HasSubstr("unknown or incomplete argument '--web.config.file'"));
}

}  // namespace
}  // namespace kpulse
