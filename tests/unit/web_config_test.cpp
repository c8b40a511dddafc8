#include "http/web_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_pki.h"

namespace kpulse {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A valid bcrypt hash (of "secret", cost 4: cheap to check).
const std::string& SecretHash() {
  static const std::string hash = test::BcryptHash("secret", 4);
  return hash;
}

// One certificate set for the whole suite: generating keys takes a moment.
class WebConfigTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = new test::TestPki(); }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }

  // The error ParseWebConfig(yaml, source) throws, or "" (and a test failure) if it throws none.
  static std::string ErrorOf(const std::string& yaml, const std::string& source = "web.yml") {
    try {
      ParseWebConfig(yaml, source);
    } catch (const WebConfigError& e) {
      const std::string message = e.what();
      EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 0) << message;
      return message;
    }
    ADD_FAILURE() << "no error for:\n" << yaml;
    return "";
  }

  // A tls_server_config section with the suite's absolute certificate paths.
  static std::string TlsSection(const std::string& extra = "") {
    return "tls_server_config:\n  cert_file: " + pki_->server_cert().string() +
           "\n  key_file: " + pki_->server_key().string() + "\n" + extra;
  }

  static test::TestPki* pki_;
};

test::TestPki* WebConfigTest::pki_ = nullptr;

TEST_F(WebConfigTest, EmptyFileIsPlainHttpWithoutAuth) {
  for (const std::string yaml : {"", "# nothing\n", "---\n", "tls_server_config:\n"}) {
    const WebConfig config = ParseWebConfig(yaml, "web.yml");
    EXPECT_FALSE(config.tls.has_value()) << yaml;
    EXPECT_TRUE(config.basic_auth_users.empty()) << yaml;
    EXPECT_EQ(config.source, "web.yml");
  }
}

TEST_F(WebConfigTest, ParsesEveryFieldAndReadsTheFiles) {
  const WebConfig config = ParseWebConfig(
      TlsSection("  client_ca_file: " + pki_->ca_cert().string() +
                 "\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n") +
          "basic_auth_users:\n  prometheus: " + SecretHash() + "\n  \"alice\": '" + SecretHash() +
          "'\n",
      "web.yml");
  ASSERT_TRUE(config.tls.has_value());
  const TlsServerConfig& tls = *config.tls;
  EXPECT_EQ(tls.cert_file, pki_->server_cert().string());
  EXPECT_EQ(tls.key_file, pki_->server_key().string());
  EXPECT_EQ(tls.client_ca_file, pki_->ca_cert().string());
  EXPECT_THAT(tls.cert_pem, StartsWith("-----BEGIN CERTIFICATE-----"));
  EXPECT_THAT(tls.key_pem, HasSubstr("PRIVATE KEY-----"));
  EXPECT_THAT(tls.client_ca_pem, StartsWith("-----BEGIN CERTIFICATE-----"));
  EXPECT_EQ(tls.client_auth, ClientAuth::kRequireAndVerifyClientCert);
  EXPECT_EQ(tls.min_version, TlsVersion::kTls13);
  EXPECT_EQ(config.basic_auth_users.size(), 2u);
  EXPECT_EQ(config.basic_auth_users.at("prometheus"), SecretHash());
  EXPECT_EQ(config.basic_auth_users.at("alice"), SecretHash());
}

TEST_F(WebConfigTest, DefaultsAreNoClientCertAndTls12) {
  const WebConfig config = ParseWebConfig(TlsSection(), "web.yml");
  ASSERT_TRUE(config.tls.has_value());
  EXPECT_EQ(config.tls->client_auth, ClientAuth::kNoClientCert);
  EXPECT_EQ(config.tls->min_version, TlsVersion::kTls12);
  EXPECT_TRUE(config.tls->client_ca_pem.empty());
}

TEST_F(WebConfigTest, RelativePathsResolveAgainstTheWebConfigsDirectory) {
  const fs::path sub = pki_->dir() / "conf";
  fs::create_directories(sub);
  const fs::path file = sub / "web.yml";
  std::ofstream(file) << "tls_server_config:\n  cert_file: ../server.crt\n"
                         "  key_file: ../server.key\n";
  const fs::path cwd = fs::current_path();
  fs::current_path("/");  // so that resolving against the working directory would fail
  WebConfig config;
  EXPECT_NO_THROW(config = LoadWebConfigFile(file.string()));
  fs::current_path(cwd);
  ASSERT_TRUE(config.tls.has_value());
  EXPECT_EQ(config.tls->cert_file, (sub / "../server.crt").string());
  EXPECT_FALSE(config.tls->cert_pem.empty());
  EXPECT_EQ(config.source, file.string());
}

TEST_F(WebConfigTest, EveryClientAuthTypeParses) {
  const std::string ca = "  client_ca_file: " + pki_->ca_cert().string() + "\n";
  const std::pair<const char*, ClientAuth> cases[] = {
      {"RequestClientCert", ClientAuth::kRequestClientCert},
      {"RequireAnyClientCert", ClientAuth::kRequireAnyClientCert},
      {"VerifyClientCertIfGiven", ClientAuth::kVerifyClientCertIfGiven},
      {"RequireAndVerifyClientCert", ClientAuth::kRequireAndVerifyClientCert},
  };
  for (const auto& [name, value] : cases) {
    const WebConfig config =
        ParseWebConfig(TlsSection(ca + "  client_auth_type: " + name + "\n"), "web.yml");
    EXPECT_EQ(config.tls->client_auth, value) << name;
    EXPECT_EQ(ToString(value), name);
  }
  EXPECT_EQ(ParseWebConfig(TlsSection("  client_auth_type: NoClientCert\n"), "w").tls->client_auth,
            ClientAuth::kNoClientCert);
  // Without verification a CA file is optional.
  EXPECT_EQ(ParseWebConfig(TlsSection("  client_auth_type: RequireAnyClientCert\n"), "w")
                .tls->client_auth,
            ClientAuth::kRequireAnyClientCert);
}

TEST_F(WebConfigTest, UnknownKeyIsAnErrorWithFileLineColumnAndPath) {
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_fil: x\n"),
            "web.yml:2:3: tls_server_config.cert_fil: unknown key (known: cert_file, key_file, "
            "client_ca_file, client_auth_type, min_version)");
  EXPECT_EQ(ErrorOf("basic_auth: {}\n"),
            "web.yml:1:1: basic_auth: unknown key (known: tls_server_config, basic_auth_users)");
}

TEST_F(WebConfigTest, ExporterToolkitKeysKpulseLacksSaySo) {
  EXPECT_EQ(ErrorOf("http_server_config:\n  http2: false\n"),
            "web.yml:1:1: http_server_config: not supported by kpulse (supported: "
            "tls_server_config, basic_auth_users)");
  EXPECT_THAT(ErrorOf(TlsSection("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")),
              HasSubstr("web.yml:4:3: tls_server_config.cipher_suites: not supported by kpulse"));
}

TEST_F(WebConfigTest, BadEnumValuesListTheAllowedOnes) {
  EXPECT_EQ(ErrorOf(TlsSection("  min_version: TLS11\n")),
            "web.yml:4:16: tls_server_config.min_version: must be one of TLS12, TLS13, got "
            "\"TLS11\"");
  EXPECT_THAT(ErrorOf(TlsSection("  client_auth_type: RequireClientCert\n")),
              HasSubstr("web.yml:4:21: tls_server_config.client_auth_type: must be one of "
                        "NoClientCert, RequestClientCert, RequireAnyClientCert, "
                        "VerifyClientCertIfGiven, RequireAndVerifyClientCert"));
}

TEST_F(WebConfigTest, MissingCertFileIsAnErrorNamingTheFileAndTheKey) {
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: " +
                    pki_->server_key().string() + "\n"),
            "web.yml:2:14: tls_server_config.cert_file: cannot read '/nonexistent/server.crt': "
            "No such file or directory");
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: " + pki_->server_cert().string() +
                    "\n  key_file: /nonexistent/server.key\n"),
            "web.yml:3:13: tls_server_config.key_file: cannot read '/nonexistent/server.key': "
            "No such file or directory");
}

TEST_F(WebConfigTest, CertAndKeyAreBothRequired) {
  EXPECT_THAT(ErrorOf("tls_server_config:\n  min_version: TLS13\n"),
              HasSubstr("web.yml:2:3: tls_server_config: cert_file is required"));
  EXPECT_THAT(ErrorOf("tls_server_config:\n  cert_file: " + pki_->server_cert().string() + "\n"),
              HasSubstr("tls_server_config: key_file is required"));
  EXPECT_THAT(
      ErrorOf("tls_server_config:\n  cert_file: \"\"\n"),
      HasSubstr("web.yml:2:14: tls_server_config.cert_file: must be a file path, got \"\""));
}

TEST_F(WebConfigTest, UnparsableFilesAreErrorsNamingThem) {
  const fs::path garbage = pki_->dir() / "garbage.pem";
  std::ofstream(garbage) << "not a certificate\n";
  const fs::path broken = pki_->dir() / "broken.crt";
  std::ofstream(broken) << "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  const std::string key = "\n  key_file: " + pki_->server_key().string() + "\n";
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: " + garbage.string() + key),
            "web.yml:2:14: tls_server_config.cert_file: '" + garbage.string() +
                "' holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
  EXPECT_THAT(ErrorOf("tls_server_config:\n  cert_file: " + broken.string() + key),
              HasSubstr("tls_server_config.cert_file: '" + broken.string() +
                        "' is not a valid PEM certificate: "));
  // The certificate where the key belongs.
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: " + pki_->server_cert().string() +
                    "\n  key_file: " + pki_->server_cert().string() + "\n"),
            "web.yml:3:13: tls_server_config.key_file: '" + pki_->server_cert().string() +
                "' holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)");
  EXPECT_THAT(ErrorOf(TlsSection("  client_auth_type: RequireAndVerifyClientCert\n"
                                 "  client_ca_file: " +
                                 garbage.string() + "\n")),
              HasSubstr("web.yml:5:19: tls_server_config.client_ca_file: '" + garbage.string() +
                        "' holds no PEM certificate"));
}

TEST_F(WebConfigTest, KeyOfAnotherCertificateIsAnError) {
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: " + pki_->server_cert().string() +
                    "\n  key_file: " + pki_->client_key().string() + "\n"),
            "web.yml:3:13: tls_server_config.key_file: '" + pki_->client_key().string() +
                "' is not the private key of the certificate in '" + pki_->server_cert().string() +
                "'");
}

TEST_F(WebConfigTest, EncryptedKeyIsAnError) {
  const fs::path encrypted = pki_->dir() / "encrypted.key";
  const test::CommandResult made =
      test::RunShell("openssl pkcs8 -topk8 -v2 aes256 -passout pass:secret -in " +
                     pki_->server_key().string() + " -out " + encrypted.string());
  ASSERT_EQ(made.exit_code, 0) << made.output;
  EXPECT_EQ(ErrorOf("tls_server_config:\n  cert_file: " + pki_->server_cert().string() +
                    "\n  key_file: " + encrypted.string() + "\n"),
            "web.yml:3:13: tls_server_config.key_file: '" + encrypted.string() +
                "' is an encrypted private key; kpulse needs it unencrypted");
}

TEST_F(WebConfigTest, VerifyingClientAuthNeedsAClientCa) {
  EXPECT_EQ(ErrorOf(TlsSection("  client_auth_type: RequireAndVerifyClientCert\n")),
            "web.yml:4:21: tls_server_config.client_auth_type: RequireAndVerifyClientCert needs "
            "tls_server_config.client_ca_file to verify certificates against");
  EXPECT_THAT(ErrorOf(TlsSection("  client_auth_type: VerifyClientCertIfGiven\n")),
              HasSubstr("VerifyClientCertIfGiven needs tls_server_config.client_ca_file"));
}

TEST_F(WebConfigTest, ClientCaWithoutClientAuthTypeIsAnError) {
  EXPECT_THAT(ErrorOf(TlsSection("  client_ca_file: " + pki_->ca_cert().string() + "\n")),
              HasSubstr("web.yml:4:19: tls_server_config.client_ca_file: is set but "
                        "client_auth_type is NoClientCert"));
}

TEST_F(WebConfigTest, UsersNeedBcryptHashesWhichAreNotQuotedInErrors) {
  EXPECT_EQ(ErrorOf("basic_auth_users:\n  alice: plaintext-password\n"),
            "web.yml:2:10: basic_auth_users.alice: must be a bcrypt hash ($2b$, $2y$ or $2a$, 60 "
            "characters, e.g. from 'htpasswd -nBC 10 USER'), got a string of 18 characters");
  // SHA-512 crypt is a valid crypt(3) hash but not what exporter-toolkit (bcrypt) accepts.
  EXPECT_THAT(ErrorOf("basic_auth_users:\n  alice: '$6$salt$" + std::string(86, 'a') + "'\n"),
              HasSubstr("basic_auth_users.alice: must be a bcrypt hash"));
  // A bcrypt setting without the hash part could never match.
  EXPECT_THAT(ErrorOf("basic_auth_users:\n  alice: " + SecretHash().substr(0, 29) + "\n"),
              HasSubstr("got a string of 29 characters starting with $2b$"));
  EXPECT_THAT(ErrorOf("basic_auth_users:\n  alice:\n"), HasSubstr("got nothing"));
  EXPECT_THAT(ErrorOf("basic_auth_users: [alice]\n"),
              HasSubstr("basic_auth_users: must be a map of user name to bcrypt hash"));
}

TEST_F(WebConfigTest, UserNamesCannotHoldColonsOrRepeat) {
  EXPECT_EQ(ErrorOf("basic_auth_users:\n  \"a:b\": " + SecretHash() + "\n"),
            "web.yml:2:3: basic_auth_users.a:b: a user name cannot contain ':' (RFC 7617 basic "
            "auth)");
  EXPECT_THAT(
      ErrorOf("basic_auth_users:\n  bob: " + SecretHash() + "\n  bob: " + SecretHash() + "\n"),
      HasSubstr("web.yml:3:3: basic_auth_users.bob: duplicate user"));
}

TEST_F(WebConfigTest, DuplicateKeysAreErrors) {
  EXPECT_EQ(ErrorOf("basic_auth_users: {}\nbasic_auth_users: {}\n"),
            "web.yml:2:1: basic_auth_users: duplicate key (first set on line 1)");
}

TEST_F(WebConfigTest, SyntaxErrorsAndExtraDocumentsAreErrors) {
  EXPECT_THAT(ErrorOf("tls_server_config: [\n"), HasSubstr("web.yml:"));
  EXPECT_THAT(ErrorOf("tls_server_config: [\n"), HasSubstr("YAML syntax error"));
  EXPECT_EQ(ErrorOf("basic_auth_users: {}\n---\nbasic_auth_users: {}\n"),
            "web.yml:3:1: only one YAML document is allowed, but another one starts here");
  EXPECT_THAT(ErrorOf("- a\n"), HasSubstr("web.yml:1:1: the top level must be a map"));
  // yaml-cpp 0.7 loops forever on this in LoadAll (jbeder/yaml-cpp#1040); here it is an error.
  EXPECT_THAT(ErrorOf(",\n"), HasSubstr("web.yml:"));
}

TEST_F(WebConfigTest, UnreadableWebConfigFileIsAnErrorNamingIt) {
  try {
    LoadWebConfigFile("/nonexistent/web.yml");
    FAIL() << "no error";
  } catch (const WebConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "cannot read web config file '/nonexistent/web.yml': No such file or directory");
  }
}

TEST_F(WebConfigTest, MessagesEscapeControlCharacters) {
  EXPECT_THAT(ErrorOf("tls_server_config:\n  min_version: \"TLS\\n12\"\n"),
              HasSubstr("got \"TLS\\x0a12\""));
}

}  // namespace
}  // namespace kpulse
