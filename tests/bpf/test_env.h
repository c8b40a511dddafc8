#pragma once
// Shared fixtures for tests that need root and real kernel objects: network namespaces, veth
// pairs, nft tables, cgroups and child processes inside them. Every object is an RAII owner
// that removes what it created, also when the test fails.

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace kpulse::test {

/// Skips when not root; under CI=true a skipped BPF test is a failure instead.
#define KPULSE_REQUIRE_ROOT()                                                            \
  do {                                                                                   \
    if (::geteuid() != 0) {                                                              \
      if (::kpulse::test::InCi()) FAIL() << "BPF tests need root, and CI must run them"; \
      GTEST_SKIP() << "BPF tests need root (load BPF programs, create netns/cgroups)";   \
    }                                                                                    \
  } while (0)

bool InCi();

/// Runs `command` with /bin/sh; throws std::runtime_error with its output when it fails.
std::string Shell(const std::string& command);

/// A named network namespace (`ip netns add`), deleted on destruction.
class NetNs {
 public:
  explicit NetNs(const std::string& tag);
  ~NetNs();
  NetNs(const NetNs&) = delete;
  NetNs& operator=(const NetNs&) = delete;

  const std::string& name() const { return name_; }
  /// Inode of the namespace (what kpulse keys flows by).
  uint32_t inode() const;
  /// Runs a shell command inside the namespace.
  std::string Exec(const std::string& command) const;
  /// Sets a sysctl inside the namespace; returns false when the kernel lacks it.
  bool Sysctl(const std::string& key, const std::string& value) const;
  /// Loads an nft ruleset (multi-line syntax) into this namespace; removed with the namespace.
  void Nft(const std::string& ruleset) const;

 private:
  std::string name_;
};

/// Connects two namespaces with a veth pair: `a` gets a_addr/24, `b` gets b_addr/24 (IPv4).
void ConnectWithVeth(const NetNs& a, const std::string& a_addr, const NetNs& b,
                     const std::string& b_addr);

/// A fresh cgroup v2 directory under the cgroup2 mount (or under `parent`), removed on
/// destruction.
class TestCgroup {
 public:
  /// `tag` becomes part of a unique directory name, or the name itself with `exact_name`.
  explicit TestCgroup(const std::string& tag, const TestCgroup* parent = nullptr,
                      bool exact_name = false);
  ~TestCgroup();
  TestCgroup(const TestCgroup&) = delete;
  TestCgroup& operator=(const TestCgroup&) = delete;

  uint64_t id() const { return id_; }                // cgroup v2 id == directory inode
  const std::string& path() const { return path_; }  // relative to the cgroup2 root
  const std::string& dir() const { return dir_; }    // absolute directory

 private:
  std::string dir_, path_;
  uint64_t id_ = 0;
};

/// A child process that joins `cgroup` (if any), enters `netns`, runs `body` and exits with its
/// return value. The destructor kills and reaps a child that is still running.
class Child {
 public:
  Child(const NetNs& netns, const TestCgroup* cgroup, std::function<int()> body);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  /// Waits for the exit status (or -signal).
  int Wait();

 private:
  pid_t pid_ = -1;
};

/// SYN retries in `ns`: `retries` retransmits per connect, with the classic exponential timeouts
/// (1 s, 2 s, ...; 6.16+ defaults to linear ones).
void FastSynRetries(const NetNs& ns, int retries);
/// nft ruleset dropping the initial SYNs (not the SYN-ACKs) to `port`.
std::string DropInitialSyns(uint16_t port);

/// The kernel's own TCP counters of one network namespace.
struct TcpCounters {
  uint64_t syn_retrans = 0;   // TcpExt: TCPSynRetrans (SYN + SYN-ACK retransmits)
  uint64_t retrans_segs = 0;  // Tcp: RetransSegs (all retransmitted segments)
};
/// Reads /proc/net/netstat and /proc/net/snmp inside `netns` (nullptr: this process's netns).
TcpCounters ReadTcpCounters(const NetNs* netns);

/// Parses "Prefix: name name\nPrefix: value value" pairs (netstat/snmp) into "Prefix.name".
std::map<std::string, uint64_t> ParseProcNetPairs(const std::string& text);

/// An nft ruleset (own table, removed with the namespace) dropping packets that match `match` in
/// the `input` or `output` hook.
std::string NftDropInput(const std::string& match);
std::string NftDropOutput(const std::string& match);

/// One-shot "I am ready" from a Child to the test: Signal() in the child, Wait() in the test.
class ReadySignal {
 public:
  ReadySignal();
  ~ReadySignal();
  ReadySignal(const ReadySignal&) = delete;
  ReadySignal& operator=(const ReadySignal&) = delete;
  void Signal() const;
  /// True when the child signalled; false when it exited first.
  bool Wait();

 private:
  int fds_[2] = {-1, -1};
};

/// A listening IPv4 TCP socket on addr:port, or -1. For use inside a Child.
int ListenTcp(const std::string& addr, uint16_t port, int backlog);
/// A blocking IPv4 TCP connection to addr:port, or -1. For use inside a Child.
int ConnectTcp(const std::string& addr, uint16_t port);

/// Starts `count` non-blocking connects to addr:port and waits (up to timeout_ms) until every
/// one has completed or failed. Returns how many failed. For use inside a Child.
int ConnectMany(const std::string& addr, uint16_t port, int count, int timeout_ms);

}  // namespace kpulse::test
