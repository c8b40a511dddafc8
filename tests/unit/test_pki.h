#pragma once

// Test helpers for TLS and basic auth: a throwaway PKI made with the openssl binary, bcrypt
// hashes made with libcrypt, and the real curl binary as the client. Nothing is committed: every
// key and certificate is generated in a temporary directory and removed with it.

#include <filesystem>
#include <string>
#include <vector>

namespace kpulse::test {

struct CommandResult {
  int exit_code = -1;  // -1: did not exit normally
  std::string output;  // stdout and stderr
};

/// Runs `command` with /bin/sh, capturing stdout and stderr.
CommandResult RunShell(const std::string& command);

/// `text` quoted for /bin/sh.
std::string ShellQuote(const std::string& text);

/// A CA, a server certificate for 127.0.0.1, ::1 and localhost signed by it, a client certificate
/// signed by it, and a client certificate signed by another CA (ECDSA P-256, valid for 2 days).
/// Throws std::runtime_error if openssl fails.
class TestPki {
 public:
  TestPki();
  ~TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path ca_cert() const { return dir_ / "ca.crt"; }
  std::filesystem::path other_ca_cert() const { return dir_ / "other-ca.crt"; }
  std::filesystem::path server_cert() const { return dir_ / "server.crt"; }
  std::filesystem::path server_key() const { return dir_ / "server.key"; }
  std::filesystem::path client_cert() const { return dir_ / "client.crt"; }
  std::filesystem::path client_key() const { return dir_ / "client.key"; }
  std::filesystem::path rogue_cert() const { return dir_ / "rogue.crt"; }  // by the other CA
  std::filesystem::path rogue_key() const { return dir_ / "rogue.key"; }

 private:
  std::filesystem::path dir_;
};

/// A bcrypt ($2b$) hash of `password` at `cost`, from libcrypt.
std::string BcryptHash(const std::string& password, unsigned cost);

/// What curl got: its exit code (0: a complete HTTP response), the HTTP status (0 when none was
/// received), the body, and curl's error message.
struct CurlResult {
  int exit_code = -1;
  int status = 0;
  std::string headers;
  std::string body;
  std::string error;
};

/// Runs `curl -sS <args> URL` with a 10 s limit. `args` are passed as separate words.
CurlResult Curl(const std::vector<std::string>& args, const std::string& url);

}  // namespace kpulse::test
