#include "test_env.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cgroup/cgroup_resolver.h"

namespace kpulse::test {

namespace {

std::string UniqueName(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "kpt-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
}

}  // namespace

bool InCi() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

std::string Shell(const std::string& command) {
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed for: " + command);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  if (status != 0) {
    throw std::runtime_error("command failed (" + std::to_string(status) + "): " + command + "\n" +
                             output);
  }
  return output;
}

NetNs::NetNs(const std::string& tag) : name_(UniqueName(tag)) {
  Shell("ip netns add " + name_);
  Shell("ip -n " + name_ + " link set lo up");
}

NetNs::~NetNs() {
  std::string ignored = "ip netns del " + name_ + " >/dev/null 2>&1";
  if (std::system(ignored.c_str()) != 0)
    std::fprintf(stderr, "cleanup: %s failed\n", ignored.c_str());
}

uint32_t NetNs::inode() const {
  struct stat st {};
  if (stat(("/run/netns/" + name_).c_str(), &st) != 0) {
    throw std::runtime_error("stat /run/netns/" + name_ + ": " + strerror(errno));
  }
  return static_cast<uint32_t>(st.st_ino);
}

std::string NetNs::Exec(const std::string& command) const {
  return Shell("ip netns exec " + name_ + " " + command);
}

bool NetNs::Sysctl(const std::string& key, const std::string& value) const {
  std::string path = key;
  for (char& c : path) c = c == '.' ? '/' : c;
  if (Exec("sh -c 'test -e /proc/sys/" + path + " && echo yes || echo no'") != "yes\n") {
    return false;
  }
  Exec("sysctl -q -w " + key + "=" + value);
  return true;
}

void NetNs::Nft(const std::string& ruleset) const {
  char file[] = "/tmp/kpulse-nft-XXXXXX";
  const int fd = mkstemp(file);
  if (fd < 0) throw std::runtime_error("mkstemp failed");
  const bool written =
      write(fd, ruleset.data(), ruleset.size()) == static_cast<ssize_t>(ruleset.size());
  close(fd);
  try {
    if (!written) throw std::runtime_error("writing nft ruleset failed");
    Exec(std::string("nft -f ") + file);
  } catch (...) {
    unlink(file);
    throw;
  }
  unlink(file);
}

void ConnectWithVeth(const NetNs& a, const std::string& a_addr, const NetNs& b,
                     const std::string& b_addr) {
  static std::atomic<int> counter{0};
  const std::string suffix = std::to_string(getpid() % 100000) + std::to_string(counter++);
  const std::string va = "kva" + suffix, vb = "kvb" + suffix;
  Shell("ip link add " + va + " netns " + a.name() + " type veth peer name " + vb + " netns " +
        b.name());
  a.Exec("ip addr add " + a_addr + "/24 dev " + va);
  b.Exec("ip addr add " + b_addr + "/24 dev " + vb);
  a.Exec("ip link set " + va + " up");
  b.Exec("ip link set " + vb + " up");
}

TestCgroup::TestCgroup(const std::string& tag, const TestCgroup* parent, bool exact_name) {
  auto root = FindCgroup2Mount();
  if (!root) throw std::runtime_error("no cgroup2 mount found");
  const std::string name = exact_name ? tag : UniqueName(tag);
  dir_ = (parent ? parent->dir() : *root) + "/" + name;
  path_ = (parent ? parent->path() : "") + "/" + name;
  if (mkdir(dir_.c_str(), 0755) != 0) {
    throw std::runtime_error("mkdir " + dir_ + ": " + strerror(errno));
  }
  struct stat st {};
  stat(dir_.c_str(), &st);
  id_ = st.st_ino;
}

TestCgroup::~TestCgroup() {
  if (rmdir(dir_.c_str()) != 0) {
    std::fprintf(stderr, "cleanup: rmdir %s: %s\n", dir_.c_str(), strerror(errno));
  }
}

Child::Child(const NetNs& netns, const TestCgroup* cgroup, std::function<int()> body) {
  // Resolve everything that allocates before fork: the child only makes plain syscalls.
  const std::string procs = cgroup ? cgroup->dir() + "/cgroup.procs" : "";
  const std::string ns_path = "/run/netns/" + netns.name();
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + strerror(errno));
  if (pid_ > 0) return;

  // Child. Join the cgroup first: sockets take their cgroup from the creating task.
  if (!procs.empty()) {
    const int fd = open(procs.c_str(), O_WRONLY);
    if (fd < 0 || write(fd, "0", 1) != 1) _exit(120);
    close(fd);
  }
  const int ns_fd = open(ns_path.c_str(), O_RDONLY);
  if (ns_fd < 0 || setns(ns_fd, CLONE_NEWNET) != 0) _exit(121);
  close(ns_fd);
  _exit(body());
}

int Child::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  if (waitpid(pid_, &status, 0) != pid_) return -1;
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

Child::~Child() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::map<std::string, uint64_t> ParseProcNetPairs(const std::string& text) {
  std::map<std::string, uint64_t> result;
  std::istringstream lines(text);
  std::string names, values;
  while (std::getline(lines, names) && std::getline(lines, values)) {
    std::istringstream n(names), v(values);
    std::string prefix, value_prefix, name, value;
    n >> prefix;
    v >> value_prefix;
    if (prefix != value_prefix) {  // out of step (a file with an odd line): realign
      names = values;
      continue;
    }
    prefix.pop_back();  // trailing ':'
    while (n >> name && v >> value) result[prefix + "." + name] = std::stoull(value);
  }
  return result;
}

TcpCounters ReadTcpCounters(const NetNs* netns) {
  const std::string command = "cat /proc/net/netstat /proc/net/snmp";
  const std::string text = netns ? netns->Exec(command) : Shell(command);
  const auto pairs = ParseProcNetPairs(text);
  TcpCounters counters;
  counters.syn_retrans = pairs.at("TcpExt.TCPSynRetrans");
  counters.retrans_segs = pairs.at("Tcp.RetransSegs");
  return counters;
}

namespace {

std::string NftDrop(const std::string& hook, const std::string& match) {
  return "table inet kpulse_test {\n"
         "  chain " +
         hook +
         " {\n"
         "    type filter hook " +
         hook +
         " priority 0; policy accept;\n"
         "    " +
         match +
         " drop\n"
         "  }\n"
         "}\n";
}

sockaddr_in Ipv4(const std::string& addr, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  inet_pton(AF_INET, addr.c_str(), &sin.sin_addr);
  return sin;
}

}  // namespace

std::string NftDropInput(const std::string& match) { return NftDrop("input", match); }

void FastSynRetries(const NetNs& ns, int retries) {
  ns.Sysctl("net.ipv4.tcp_syn_linear_timeouts", "0");  // 6.18 default 4 (absent before 6.16)
  ns.Sysctl("net.ipv4.tcp_syn_retries", std::to_string(retries));
}

std::string DropInitialSyns(uint16_t port) {
  return NftDropInput("tcp dport " + std::to_string(port) + " tcp flags & (syn|ack) == syn");
}
std::string NftDropOutput(const std::string& match) { return NftDrop("output", match); }

ReadySignal::ReadySignal() {
  if (pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
}

ReadySignal::~ReadySignal() {
  close(fds_[0]);
  if (fds_[1] >= 0) close(fds_[1]);
}

void ReadySignal::Signal() const { (void)!write(fds_[1], "r", 1); }

bool ReadySignal::Wait() {
  close(fds_[1]);  // so that a child exiting without Signal() ends the read with EOF
  fds_[1] = -1;
  char byte;
  return read(fds_[0], &byte, 1) == 1;
}

int ListenTcp(const std::string& addr, uint16_t port, int backlog) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const sockaddr_in sin = Ipv4(addr, port);
  if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) != 0 ||
      listen(fd, backlog) != 0) {
    return -1;
  }
  return fd;
}

int ConnectTcp(const std::string& addr, uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const sockaddr_in sin = Ipv4(addr, port);
  if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) != 0) return -1;
  return fd;
}

int ConnectMany(const std::string& addr, uint16_t port, int count, int timeout_ms) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_INET;
  if (inet_pton(AF_INET6, addr.c_str(), &reinterpret_cast<sockaddr_in6*>(&storage)->sin6_addr) ==
      1) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    family = sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    length = sizeof(sockaddr_in6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
    inet_pton(AF_INET, addr.c_str(), &sin->sin_addr);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    length = sizeof(sockaddr_in);
  }
  std::vector<pollfd> fds;
  for (int i = 0; i < count; ++i) {
    const int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (connect(fd, reinterpret_cast<sockaddr*>(&storage), length) != 0 && errno != EINPROGRESS) {
      return -1;
    }
    fds.push_back({fd, POLLOUT, 0});
  }
  int failed = 0;
  size_t pending = fds.size();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (pending > 0 && std::chrono::steady_clock::now() < deadline) {
    if (poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR) break;
    for (auto& pfd : fds) {
      if (pfd.fd < 0 || pfd.revents == 0) continue;
      int error = 0;
      socklen_t len = sizeof(error);
      getsockopt(pfd.fd, SOL_SOCKET, SO_ERROR, &error, &len);
      if (error != 0) ++failed;
      close(pfd.fd);
      pfd.fd = -1;  // poll ignores negative fds
      --pending;
    }
  }
  for (auto& pfd : fds) {
    if (pfd.fd >= 0) close(pfd.fd);
  }
  return failed;
}

}  // namespace kpulse::test
