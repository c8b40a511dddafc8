#include "http/web_config.h"

#include <crypt.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include "config/yaml_text.h"

namespace kpulse {

namespace {

// `text` between two `quote`s. (Not "'" + text + "'": GCC 12 at -O3 sees a false overlap in
// operator+(const char*, string&&) and warns with -Wrestrict.)
std::string Quoted(std::string_view text, char quote = '\'') {
  std::string out;
  out.reserve(text.size() + 2);
  out += quote;
  out += text;
  out += quote;
  return out;
}

// Certificates, keys and web configs are a few KiB; the cap only stops a mistaken path
// (/dev/zero, a log file) from being read forever.
constexpr size_t kMaxFileBytes = 1 << 20;
// Quoted values and paths are cut to this length, so one bad value cannot flood a log line.
constexpr size_t kMaxQuoted = 200;

template <typename E>
struct EnumName {
  std::string_view name;
  E value;
};

constexpr std::array<EnumName<ClientAuth>, 5> kClientAuthNames{{
    {"NoClientCert", ClientAuth::kNoClientCert},
    {"RequestClientCert", ClientAuth::kRequestClientCert},
    {"RequireAnyClientCert", ClientAuth::kRequireAnyClientCert},
    {"VerifyClientCertIfGiven", ClientAuth::kVerifyClientCertIfGiven},
    {"RequireAndVerifyClientCert", ClientAuth::kRequireAndVerifyClientCert},
}};

constexpr std::array<EnumName<TlsVersion>, 2> kTlsVersionNames{{
    {"TLS12", TlsVersion::kTls12},
    {"TLS13", TlsVersion::kTls13},
}};

// Keys of exporter-toolkit's format that kpulse knows of but does not implement: saying so is
// more useful than "unknown key" to someone who copied node_exporter's file.
constexpr std::array<std::string_view, 9> kUnsupportedToolkitKeys{
    {"http_server_config", "max_version", "cipher_suites", "prefer_server_cipher_suites",
     "curve_preferences", "client_allowed_sans", "cert", "key", "client_ca"}};

template <typename E, size_t N>
std::string_view NameOf(const std::array<EnumName<E>, N>& names, E value) {
  for (const auto& entry : names) {
    if (entry.value == value) return entry.name;
  }
  return "unknown";
}

// `text` made safe for a one-line message: control bytes escaped, cut after `max_length` bytes
// (never inside a UTF-8 sequence).
std::string Printable(std::string_view text, size_t max_length = kMaxQuoted) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (out.size() >= max_length && (byte & 0xc0) != 0x80) {
      out += "...";
      break;
    }
    if (byte < 0x20 || byte == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", byte);
      out += escaped;
    } else {
      out += text[i];
    }
  }
  return out;
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Scalar:
      return Quoted(Printable(node.Scalar(), 60), '"');
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// A node being parsed, with its dotted key path and the position that errors about it name.
struct Value {
  YAML::Node node;
  std::string path;
  YAML::Mark mark;
};

struct Field {
  std::string_view key;
  std::function<void(const Value&)> parse;
};

class WebConfigParser {
 public:
  explicit WebConfigParser(const std::string& source)
      : source_(source.empty() ? "<web config>" : Printable(source)),
        base_(std::filesystem::path(source).parent_path()) {}

  [[noreturn]] void Fail(const YAML::Mark& mark, std::string_view path,
                         std::string_view reason) const {
    std::string message = source_;
    if (!mark.is_null()) {
      message += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    message += ": ";
    if (!path.empty()) {
      message += path;
      message += ": ";
    }
    message += reason;
    throw WebConfigError(message);
  }

  [[noreturn]] void Fail(const Value& value, std::string_view reason) const {
    Fail(value.mark, value.path, reason);
  }

  WebConfig ParseDocument(const YAML::Node& root) const {
    WebConfig config;
    if (root.IsNull()) return config;
    if (!root.IsMap()) {
      Fail(root.Mark(), "", "the top level must be a map, got " + Describe(root));
    }
    ParseMap(
        Value{root, "", root.Mark()},
        {
            {"tls_server_config", [&](const Value& v) { config.tls = ParseTls(v); }},
            {"basic_auth_users", [&](const Value& v) { config.basic_auth_users = ParseUsers(v); }},
        });
    return config;
  }

 private:
  // Walks a map in document order (so the first problem in the file is the one reported),
  // rejecting duplicate and unknown keys.
  void ParseMap(const Value& map, std::initializer_list<Field> fields) const {
    if (map.node.IsNull()) return;
    if (!map.node.IsMap()) Fail(map, "must be a map, got " + Describe(map.node));
    std::vector<std::pair<std::string, int>> seen;  // Key, 0-based line.
    for (const auto& entry : map.node) {
      const YAML::Node& key = entry.first;
      const YAML::Mark key_mark = key.Mark().is_null() ? map.mark : key.Mark();
      if (!key.IsScalar()) Fail(key_mark, map.path, "keys must be strings, got " + Describe(key));
      const std::string& name = key.Scalar();
      const std::string path = (map.path.empty() ? "" : map.path + ".") + Printable(name, 60);
      const auto previous =
          std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == name; });
      if (previous != seen.end()) {
        Fail(key_mark, path,
             "duplicate key (first set on line " + std::to_string(previous->second + 1) + ")");
      }
      seen.emplace_back(name, key_mark.line);
      const auto field =
          std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == name; });
      if (field == fields.end()) {
        std::string known;
        for (const Field& f : fields) known += (known.empty() ? "" : ", ") + std::string(f.key);
        const bool toolkit =
            std::find(kUnsupportedToolkitKeys.begin(), kUnsupportedToolkitKeys.end(), name) !=
            kUnsupportedToolkitKeys.end();
        Fail(key_mark, path,
             (toolkit ? "not supported by kpulse (supported: " : "unknown key (known: ") + known +
                 ")");
      }
      // yaml-cpp marks an empty value at the next token, often on the next line: point at the key.
      const YAML::Node& node = entry.second;
      const bool own_mark = !node.IsNull() && !node.Mark().is_null();
      field->parse(Value{node, path, own_mark ? node.Mark() : key_mark});
    }
  }

  std::string ParseString(const Value& v, std::string_view what) const {
    if (!v.node.IsScalar() || v.node.Scalar().empty()) {
      Fail(v, "must be " + std::string(what) + ", got " + Describe(v.node));
    }
    return v.node.Scalar();
  }

  template <typename E, size_t N>
  E ParseEnum(const Value& v, const std::array<EnumName<E>, N>& names) const {
    if (v.node.IsScalar()) {
      for (const auto& entry : names) {
        if (v.node.Scalar() == entry.name) return entry.value;
      }
    }
    std::string allowed;
    for (const auto& entry : names)
      allowed += (allowed.empty() ? "" : ", ") + std::string(entry.name);
    Fail(v, "must be one of " + allowed + ", got " + Describe(v.node));
  }

  // Relative paths are relative to the web config's directory, as in exporter-toolkit.
  std::string Resolve(const std::string& path) const {
    const std::filesystem::path p(path);
    if (p.is_absolute() || base_.empty()) return path;
    return (base_ / p).string();
  }

  std::string ReadFileAt(const Value& v, const std::string& path) const {
    std::string text;
    std::string error = ReadSmallFile(path, kMaxFileBytes, text);
    if (!error.empty()) Fail(v, "cannot read '" + Printable(path) + "': " + error);
    return text;
  }

  std::optional<TlsServerConfig> ParseTls(const Value& v) const {
    if (v.node.IsNull()) return std::nullopt;  // An empty section: plain HTTP.
    TlsServerConfig tls;
    std::optional<Value> cert, key, ca, auth;
    ParseMap(v, {
                    {"cert_file",
                     [&](const Value& c) {
                       tls.cert_file = Resolve(ParseString(c, "a file path"));
                       cert.emplace(c);
                     }},
                    {"key_file",
                     [&](const Value& c) {
                       tls.key_file = Resolve(ParseString(c, "a file path"));
                       key.emplace(c);
                     }},
                    {"client_ca_file",
                     [&](const Value& c) {
                       tls.client_ca_file = Resolve(ParseString(c, "a file path"));
                       ca.emplace(c);
                     }},
                    {"client_auth_type",
                     [&](const Value& c) {
                       tls.client_auth = ParseEnum(c, kClientAuthNames);
                       auth.emplace(c);
                     }},
                    {"min_version",
                     [&](const Value& c) { tls.min_version = ParseEnum(c, kTlsVersionNames); }},
                });
    if (!cert) Fail(v, "cert_file is required (and key_file) when tls_server_config is set");
    if (!key) Fail(v, "key_file is required when cert_file is set");
    const bool verifies = tls.client_auth == ClientAuth::kVerifyClientCertIfGiven ||
                          tls.client_auth == ClientAuth::kRequireAndVerifyClientCert;
    if (verifies && !ca) {
      Fail(*auth, std::string(ToString(tls.client_auth)) +
                      " needs tls_server_config.client_ca_file to verify certificates against");
    }
    if (ca && tls.client_auth == ClientAuth::kNoClientCert) {
      Fail(*ca,
           "is set but client_auth_type is NoClientCert, so no client certificate would be asked "
           "for: set client_auth_type (e.g. RequireAndVerifyClientCert) or remove client_ca_file");
    }

    // The files, in the order the checks depend on: certificate, key (and that they match), CA.
    tls.cert_pem = ReadFileAt(*cert, tls.cert_file);
    CheckCertificates(*cert, tls.cert_file, tls.cert_pem);
    tls.key_pem = ReadFileAt(*key, tls.key_file);
    CheckKey(*key, tls);
    if (ca) {
      tls.client_ca_pem = ReadFileAt(*ca, tls.client_ca_file);
      CheckCertificates(*ca, tls.client_ca_file, tls.client_ca_pem);
    }
    return tls;
  }

  // At least one PEM certificate, every one of them parsable.
  void CheckCertificates(const Value& v, const std::string& path, const std::string& pem) const {
    if (pem.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      Fail(v, Quoted(Printable(path)) + " holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    gnutls_datum_t data{reinterpret_cast<unsigned char*>(const_cast<char*>(pem.data())),
                        static_cast<unsigned>(pem.size())};
    gnutls_x509_crt_t* certs = nullptr;
    unsigned count = 0;
    const int result = gnutls_x509_crt_list_import2(&certs, &count, &data, GNUTLS_X509_FMT_PEM, 0);
    for (unsigned i = 0; i < count; ++i) gnutls_x509_crt_deinit(certs[i]);
    gnutls_free(certs);
    if (result < 0 || count == 0) {
      Fail(v, Quoted(Printable(path)) + " is not a valid PEM certificate: " +
                  (result < 0 ? gnutls_strerror(result) : "no certificate found"));
    }
  }

  // A parsable, unencrypted PEM private key that belongs to the certificate: the same check
  // GnuTLS makes when the server starts (gnutls_certificate_set_x509_key_mem).
  void CheckKey(const Value& v, const TlsServerConfig& tls) const {
    const std::string where = Quoted(Printable(tls.key_file));
    if (tls.key_pem.find("-----BEGIN") == std::string::npos ||
        tls.key_pem.find("PRIVATE KEY-----") == std::string::npos) {
      Fail(v, where + " holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)");
    }
    if (tls.key_pem.find("ENCRYPTED") != std::string::npos) {
      Fail(v, where + " is an encrypted private key; kpulse needs it unencrypted");
    }
    gnutls_datum_t key{reinterpret_cast<unsigned char*>(const_cast<char*>(tls.key_pem.data())),
                       static_cast<unsigned>(tls.key_pem.size())};
    gnutls_x509_privkey_t parsed = nullptr;
    int result = gnutls_x509_privkey_init(&parsed);
    if (result == 0) {
      result = gnutls_x509_privkey_import2(parsed, &key, GNUTLS_X509_FMT_PEM, nullptr, 0);
      gnutls_x509_privkey_deinit(parsed);
    }
    if (result < 0) {
      Fail(v, where + " is not a valid PEM private key: " + gnutls_strerror(result));
    }
    gnutls_datum_t cert{reinterpret_cast<unsigned char*>(const_cast<char*>(tls.cert_pem.data())),
                        static_cast<unsigned>(tls.cert_pem.size())};
    gnutls_certificate_credentials_t credentials = nullptr;
    result = gnutls_certificate_allocate_credentials(&credentials);
    if (result == 0) {
      result = gnutls_certificate_set_x509_key_mem(credentials, &cert, &key, GNUTLS_X509_FMT_PEM);
      gnutls_certificate_free_credentials(credentials);
    }
    if (result == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
      Fail(v, where + " is not the private key of the certificate in '" + Printable(tls.cert_file) +
                  "'");
    }
    if (result < 0) {
      Fail(v, where + " and '" + Printable(tls.cert_file) +
                  "' are not a usable key pair: " + gnutls_strerror(result));
    }
  }

  std::map<std::string, std::string> ParseUsers(const Value& v) const {
    std::map<std::string, std::string> users;
    if (v.node.IsNull()) return users;
    if (!v.node.IsMap()) {
      Fail(v, "must be a map of user name to bcrypt hash, got " + Describe(v.node));
    }
    for (const auto& entry : v.node) {
      const YAML::Node& key = entry.first;
      const YAML::Mark key_mark = key.Mark().is_null() ? v.mark : key.Mark();
      if (!key.IsScalar() || key.Scalar().empty()) {
        Fail(key_mark, v.path, "user names must be non-empty strings, got " + Describe(key));
      }
      const std::string& name = key.Scalar();
      const std::string path = v.path + "." + Printable(name, 60);
      if (name.find(':') != std::string::npos) {
        Fail(key_mark, path, "a user name cannot contain ':' (RFC 7617 basic auth)");
      }
      if (std::any_of(name.begin(), name.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
        Fail(key_mark, path, "a user name cannot contain control characters");
      }
      if (users.count(name) != 0) Fail(key_mark, path, "duplicate user");
      const YAML::Node& hash = entry.second;
      const Value value{hash, path,
                        !hash.IsNull() && !hash.Mark().is_null() ? hash.Mark() : key_mark};
      users.emplace(name, ParseBcryptHash(value));
    }
    return users;
  }

  // A complete bcrypt hash ("$2b$" cost "$" 22 salt + 31 hash characters) that libcrypt accepts.
  // The hash itself is not quoted in messages.
  std::string ParseBcryptHash(const Value& v) const {
    const std::string expected =
        "must be a bcrypt hash ($2b$, $2y$ or $2a$, 60 characters, e.g. from "
        "'htpasswd -nBC 10 USER')";
    if (!v.node.IsScalar()) Fail(v, expected + ", got " + Describe(v.node));
    const std::string& hash = v.node.Scalar();
    const bool bcrypt_prefix = hash.size() >= 4 && hash[0] == '$' && hash[1] == '2' &&
                               (hash[2] == 'a' || hash[2] == 'b' || hash[2] == 'y') &&
                               hash[3] == '$';
    if (!bcrypt_prefix || hash.size() != 60 || crypt_checksalt(hash.c_str()) != CRYPT_SALT_OK) {
      Fail(v, expected + ", got a string of " + std::to_string(hash.size()) + " characters" +
                  (bcrypt_prefix ? " starting with " + hash.substr(0, 4) : ""));
    }
    return hash;
  }

 private:
  std::string source_;
  std::filesystem::path base_;
};

}  // namespace

WebConfig ParseWebConfig(const std::string& yaml_text, const std::string& source_name) {
  const WebConfigParser parser(source_name);
  WebConfig config;
  try {
    const auto fail = [&](const YAML::Mark& mark, const std::string& reason) {
      parser.Fail(mark, "", reason);
    };
    const auto quote = [](std::string_view token) { return Printable(token); };
    if (FirstYamlDocumentHasContent(yaml_text, fail, quote)) {
      config = parser.ParseDocument(YAML::Load(yaml_text));
    }
  } catch (const YAML::ParserException& e) {
    parser.Fail(e.mark, "", "YAML syntax error: " + Printable(e.msg));
  } catch (const YAML::Exception& e) {
    parser.Fail(e.mark, "", "YAML error: " + Printable(e.msg));
  }
  config.source = source_name;
  return config;
}

WebConfig LoadWebConfigFile(const std::string& path) {
  std::string text;
  const std::string error = ReadSmallFile(path, kMaxFileBytes, text);
  if (!error.empty()) {
    throw WebConfigError("cannot read web config file '" + Printable(path) + "': " + error);
  }
  return ParseWebConfig(text, path);
}

std::string_view ToString(ClientAuth client_auth) { return NameOf(kClientAuthNames, client_auth); }

std::string_view ToString(TlsVersion version) { return NameOf(kTlsVersionNames, version); }

}  // namespace kpulse
