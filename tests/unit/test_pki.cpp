#include "test_pki.h"

#include <crypt.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace kpulse::test {

namespace fs = std::filesystem;

CommandResult RunShell(const std::string& command) {
  CommandResult result;
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

namespace {

void Openssl(const fs::path& dir, const std::string& arguments) {
  const CommandResult result = RunShell("cd " + ShellQuote(dir) + " && openssl " + arguments);
  if (result.exit_code != 0) {
    throw std::runtime_error("openssl " + arguments + " failed: " + result.output);
  }
}

void MakeCa(const fs::path& dir, const std::string& name) {
  Openssl(dir, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout " +
                   name + ".key -out " + name + ".crt -subj /CN=kpulse-test-" + name +
                   " -addext basicConstraints=critical,CA:TRUE"
                   " -addext keyUsage=critical,keyCertSign,cRLSign");
}

void MakeLeaf(const fs::path& dir, const std::string& name, const std::string& ca,
              const std::string& extensions) {
  std::ofstream(dir / (name + ".ext")) << extensions;
  Openssl(dir, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + name +
                   ".key -out " + name + ".csr -subj /CN=kpulse-test-" + name);
  Openssl(dir, "x509 -req -days 2 -in " + name + ".csr -CA " + ca + ".crt -CAkey " + ca +
                   ".key -CAcreateserial -out " + name + ".crt -extfile " + name + ".ext");
}

}  // namespace

TestPki::TestPki() {
  char pattern[] = "/tmp/kpulse-pki-XXXXXX";
  if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = pattern;
  MakeCa(dir_, "ca");
  MakeCa(dir_, "other-ca");
  MakeLeaf(dir_, "server", "ca",
           "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
           "extendedKeyUsage=serverAuth\n");
  MakeLeaf(dir_, "client", "ca", "extendedKeyUsage=clientAuth\n");
  MakeLeaf(dir_, "rogue", "other-ca", "extendedKeyUsage=clientAuth\n");
}

TestPki::~TestPki() {
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

std::string BcryptHash(const std::string& password, unsigned cost) {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (crypt_gensalt_rn("$2b$", cost, nullptr, 0, setting, sizeof(setting)) == nullptr) {
    throw std::runtime_error("crypt_gensalt_rn failed");
  }
  auto data = std::make_unique<crypt_data>();
  const char* hash = crypt_rn(password.c_str(), setting, data.get(), sizeof(crypt_data));
  if (hash == nullptr) throw std::runtime_error("crypt_rn failed");
  return hash;
}

CurlResult Curl(const std::vector<std::string>& args, const std::string& url) {
  char pattern[] = "/tmp/kpulse-curl-XXXXXX";
  if (mkdtemp(pattern) == nullptr) throw std::runtime_error("mkdtemp failed");
  const fs::path dir = pattern;
  std::string command = "curl -sS --max-time 10 -o " + ShellQuote(dir / "body") + " -D " +
                        ShellQuote(dir / "headers") + " -w '%{http_code}'";
  for (const std::string& arg : args) command += " " + ShellQuote(arg);
  command += " " + ShellQuote(url) + " 2>" + ShellQuote(dir / "error");
  const CommandResult run = RunShell(command);
  CurlResult result;
  result.exit_code = run.exit_code;
  try {
    result.status = std::stoi(run.output);
  } catch (const std::exception&) {
    result.status = 0;
  }
  const auto read = [](const fs::path& path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
  };
  result.body = read(dir / "body");
  result.headers = read(dir / "headers");
  result.error = read(dir / "error");
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  return result;
}

}  // namespace kpulse::test
