#pragma once

// The web config (`--web.config.file`): TLS and basic auth for the HTTP server, in the format of
// the Prometheus exporter toolkit (`web-config.yml`, as node_exporter reads it):
//
//   tls_server_config:
//     cert_file: server.crt        # PEM; relative paths are relative to this file's directory
//     key_file: server.key         # PEM, unencrypted
//     client_ca_file: ca.crt       # PEM; CAs that client certificates are verified against
//     client_auth_type: RequireAndVerifyClientCert
//     min_version: TLS12           # TLS12 | TLS13
//   basic_auth_users:
//     prometheus: $2b$10$...       # bcrypt hashes
//
// Error policy (as for the main config, config/config.h): loading happens at start-up, failures
// throw WebConfigError whose what() is exactly one line,
//
//   FILE:LINE:COLUMN: KEY.PATH: reason
//
// and any input, however malformed, gives either a WebConfig or a WebConfigError. The certificate,
// key and CA files are read and checked (PEM, parsable, key matching the certificate) while
// loading, so a broken file is reported at start-up, naming the file and the key that points to
// it. docs/configuration.md ("Web config") lists the fields and the rules.

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kpulse {

/// Whether and how client certificates are asked for, with Go's crypto/tls names (as
/// exporter-toolkit spells them).
enum class ClientAuth {
  kNoClientCert,             // Not asked for.
  kRequestClientCert,        // Asked for; none or any certificate is accepted, unverified.
  kRequireAnyClientCert,     // Required; not verified against a CA (the client proves it holds the
                             // key, nothing more).
  kVerifyClientCertIfGiven,  // Asked for; if one is sent it must verify against client_ca_file.
  kRequireAndVerifyClientCert  // Required, and must verify against client_ca_file.
};

/// Lowest TLS version accepted. exporter-toolkit's TLS10 and TLS11 are not offered.
enum class TlsVersion { kTls12, kTls13 };

/// YAML `tls_server_config`. The file contents are read (and validated) at load time.
struct TlsServerConfig {
  std::string cert_file;       // Resolved path (relative ones against the web config's directory).
  std::string key_file;        // Resolved path.
  std::string client_ca_file;  // Resolved path; empty when not set.
  std::string cert_pem;        // The certificate chain, PEM, as read from cert_file.
  std::string key_pem;         // The private key, PEM, as read from key_file.
  std::string client_ca_pem;   // The CA certificates, PEM; empty when client_ca_file is not set.
  ClientAuth client_auth = ClientAuth::kNoClientCert;
  TlsVersion min_version = TlsVersion::kTls12;
};

/// A validated web config. A plain value. The default (no TLS, no users) is plain HTTP without
/// authentication, which is also what an empty file gives.
struct WebConfig {
  std::string source;                  // The file it came from (or the source name given).
  std::optional<TlsServerConfig> tls;  // nullopt: plain HTTP.
  // User name -> bcrypt hash ($2a$, $2b$ or $2y$). Empty: no authentication.
  std::map<std::string, std::string> basic_auth_users;
};

/// Thrown for an invalid or unreadable web config; what() is one line (see the file comment).
class WebConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Parses and validates `yaml_text`. `source_name` prefixes error messages, becomes
/// WebConfig::source, and its directory is the base of relative cert/key/CA paths (so pass the
/// file's path). Reads the files it names. Throws WebConfigError on the first problem found.
WebConfig ParseWebConfig(const std::string& yaml_text, const std::string& source_name);

/// Reads `path` and parses it as ParseWebConfig(text, path) does. Throws WebConfigError, also when
/// the file cannot be read ("cannot read web config file 'PATH': <strerror>").
WebConfig LoadWebConfigFile(const std::string& path);

/// The YAML spelling of each enum value ("RequireAndVerifyClientCert", "TLS13", ...).
std::string_view ToString(ClientAuth client_auth);
std::string_view ToString(TlsVersion version);

}  // namespace kpulse
