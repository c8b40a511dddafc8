// End to end: the built kpulse binary, started as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC),
// scraped over HTTP, checked by promtool and by a real Prometheus server, and compared with the
// kernel's counters of a namespace in which a SYN storm is generated.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "../bpf/test_env.h"
#include "service/privileges.h"

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

// A scratch directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/kpulse-e2e-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The receiving end of sd_notify(3): an AF_UNIX datagram socket NOTIFY_SOCKET points to.
class NotifySocket {
 public:
  explicit NotifySocket(const fs::path& path) : path_(path) {
    unlink(path.c_str());  // a previous daemon's socket in the same test
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw std::runtime_error("bind notify socket: " + std::string(strerror(errno)));
    }
  }
  ~NotifySocket() {
    close(fd_);
    unlink(path_.c_str());
  }
  const fs::path& path() const { return path_; }

  /// Waits for a datagram containing `needle`; returns it, or "" on timeout.
  std::string WaitFor(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd pfd{fd_, POLLIN, 0};
      if (poll(&pfd, 1, 100) <= 0) continue;
      char buffer[4096];
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) continue;
      std::string message(buffer, static_cast<size_t>(n));
      if (message.find(needle) != std::string::npos) return message;
    }
    return "";
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

struct RunResult {
  int exit_code = -1;
  std::string output;
};

// Runs a command to completion, capturing stdout and stderr.
RunResult RunCommand(const std::string& command) {
  RunResult result;
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// A background process (the daemon, Prometheus), killed and reaped on destruction.
class Process {
 public:
  Process(std::vector<std::string> argv, std::vector<std::string> env, const fs::path& log) {
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      for (const auto& assignment : env) putenv(const_cast<char*>(assignment.c_str()));
      std::vector<char*> args;
      for (auto& arg : argv) args.push_back(arg.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  /// Sends `signal` and waits up to `timeout` for the exit code (-1 on timeout).
  int Stop(int signal, std::chrono::milliseconds timeout) {
    kill(pid_, signal);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
};

std::string HttpGet(const std::string& host, uint16_t port, const std::string& target) {
  const bool v6 = host.find(':') != std::string::npos;
  const int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage storage{};
  socklen_t length;
  if (v6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr);
    length = sizeof(*sin6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &sin->sin_addr);
    length = sizeof(*sin);
  }
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&storage), length) == 0) {
    const std::string request =
        "GET " + target + " HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n";
    (void)!write(fd, request.data(), request.size());
    char buffer[65536];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof(buffer))) > 0)
      response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const auto body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

uint16_t FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t length = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return ntohs(addr.sin_port);
}

// Sum of the samples of `family` whose label set contains every `needles` entry.
double SumSamples(const std::string& page, const std::string& family,
                  const std::vector<std::string>& needles) {
  double sum = 0;
  std::istringstream lines(page);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(family + "{", 0) != 0 && line.rfind(family + " ", 0) != 0) continue;
    bool all = true;
    for (const auto& needle : needles) all = all && line.find(needle) != std::string::npos;
    if (all) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// Any BPF program of ours still loaded (their names start with "retransmit_")?
bool RetransProgramsLoaded() {
  __u32 id = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) {
    const int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    __u32 length = sizeof(info);
    const bool ours = bpf_obj_get_info_by_fd(fd, &info, &length) == 0 &&
                      std::string(info.name).rfind("retransmit_", 0) == 0;
    close(fd);
    if (ours) return true;
  }
  return false;
}

class DaemonE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { KPULSE_REQUIRE_ROOT(); }

  // Starts kpulse with `yaml`, waits for READY=1 and returns the port it serves on.
  uint16_t StartDaemon(const std::string& yaml, std::vector<std::string> env = {}) {
    config_ = dir_.path() / "kpulse.yaml";
    std::ofstream(config_) << yaml;
    daemon_.reset();
    notify_.reset();
    notify_ = std::make_unique<NotifySocket>(dir_.path() / "notify.sock");
    env.push_back("NOTIFY_SOCKET=" + notify_->path().string());
    daemon_ = std::make_unique<Process>(
        std::vector<std::string>{KPULSE_BINARY, "--config", config_.string()}, env,
        dir_.path() / "kpulse.log");
    const std::string ready = notify_->WaitFor("READY=1", 20s);
    EXPECT_FALSE(ready.empty()) << "no READY=1; log:\n" << ReadFile(dir_.path() / "kpulse.log");
    std::smatch match;
    const std::regex port_pattern(R"(127\.0\.0\.1:(\d+))");
    if (!std::regex_search(ready, match, port_pattern)) {
      ADD_FAILURE() << "READY status names no port: " << ready;
      return 0;
    }
    status_ = ready;
    return static_cast<uint16_t>(std::stoi(match[1]));
  }

  TempDir dir_;
  fs::path config_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<Process> daemon_;
  std::string status_;
};

constexpr const char* kBaseConfig =
    "log_level: info\n"
    "http:\n"
    "  listen_addresses: [\"127.0.0.1:0\"]\n";

TEST_F(DaemonE2eTest, MetricsPagePassesPromtoolAndNamesTheHook) {
  const uint16_t port = StartDaemon(kBaseConfig);
  ASSERT_NE(port, 0);
  EXPECT_THAT(status_, HasSubstr("3/3 probes attached"));
  // Scheduler series appear once some thread has blocked and run again after the load: wait
  // (this test's own sleeps are such blocks) rather than scrape a page that cannot have them.
  std::string page;
  for (int attempt = 0; attempt < 50; ++attempt) {
    page = HttpGet("127.0.0.1", port, "/metrics");
    if (page.find("kpulse_offcpu_seconds_total{") != std::string::npos &&
        page.find("kpulse_runqueue_latency_seconds_count{") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_THAT(page, HasSubstr("kpulse_tcp_retransmits_total{kind=\"syn\"}"));
  EXPECT_THAT(page, HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"} 1"));
  EXPECT_THAT(page, HasSubstr("kpulse_probe_info{probe=\"tcp_retransmit\",hook=\"tp_btf\"} 1"));
  EXPECT_THAT(page, HasSubstr("kpulse_build_info{"));
  EXPECT_THAT(page,
              HasSubstr("kpulse_probe_info{probe=\"runqueue_latency\",hook=\"sched_info\"} 1"));
  EXPECT_THAT(page, HasSubstr("kpulse_node_runqueue_latency_seconds_bucket{le=\"+Inf\"}"));
  EXPECT_THAT(page, HasSubstr("kpulse_runqueue_latency_seconds_count{cgroup=\""));
  EXPECT_THAT(page, HasSubstr("kpulse_bpf_program_runs_total{program=\"sched_switch_info\"}"));
  EXPECT_THAT(page, HasSubstr("kpulse_probe_info{probe=\"offcpu\",hook=\"sched_info\"} 1"));
  EXPECT_THAT(page, HasSubstr("kpulse_offcpu_seconds_total{cgroup=\""));
  EXPECT_THAT(page, HasSubstr("kpulse_offcpu_block_duration_seconds_bucket{cgroup=\""));
  std::ofstream(dir_.path() / "page.txt") << page;
  const RunResult promtool =
      RunCommand("promtool check metrics < " + (dir_.path() / "page.txt").string());
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output << "\n" << page;
  EXPECT_EQ(HttpGet("127.0.0.1", port, "/healthz"), "ok\n");
  const std::string index = HttpGet("127.0.0.1", port, "/");
  for (const char* link : {"href=\"/metrics\"", "href=\"/healthz\"", "href=\"/debug/offcpu\""}) {
    EXPECT_THAT(index, HasSubstr(link));
  }
  // The HTTP server's own counters, scrape duration included.
  const std::string again = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_THAT(again, HasSubstr("kpulse_http_requests_total{handler=\"/metrics\",code=\"200\"}"));
  EXPECT_THAT(again, HasSubstr("kpulse_http_request_duration_seconds_count{handler=\"/metrics\"}"));
  EXPECT_THAT(again, HasSubstr("kpulse_http_rejected_connections_total 0"));
}

TEST_F(DaemonE2eTest, SynStormInANamespaceEqualsItsTcpSynRetransOverHttp) {
  test::NetNs ns("e2e");
  ns.Sysctl("net.ipv4.tcp_syn_linear_timeouts", "0");
  ns.Sysctl("net.ipv4.tcp_syn_retries", "1");
  ns.Nft(test::NftDropInput("tcp dport 7000 tcp flags & (syn|ack) == syn"));
  const uint16_t port =
      StartDaemon(std::string(kBaseConfig) + "probes:\n  tcp_retransmit:\n    netns_label: true\n");
  ASSERT_NE(port, 0);

  const test::TcpCounters before = test::ReadTcpCounters(&ns);
  test::Child storm(ns, nullptr, [] { return test::ConnectMany("127.0.0.1", 7000, 20, 10000); });
  EXPECT_EQ(storm.Wait(), 20);
  const test::TcpCounters after = test::ReadTcpCounters(&ns);

  const std::string page = HttpGet("127.0.0.1", port, "/metrics");
  const double scraped = SumSamples(page, "kpulse_tcp_flow_retransmits_total",
                                    {"netns=\"" + std::to_string(ns.inode()) + "\"", "kind=\"syn\"",
                                     "rport=\"7000\"", "lport=\"0\""});
  EXPECT_EQ(after.syn_retrans - before.syn_retrans, 20u) << "setup: 20 connects x 1 retry";
  EXPECT_EQ(scraped, static_cast<double>(after.syn_retrans - before.syn_retrans)) << page;
}

// A process that keeps switching (short spins and naps) inside `cgroup` until destroyed.
class BusyInCgroup {
 public:
  explicit BusyInCgroup(const test::TestCgroup& cgroup) {
    const std::string procs = cgroup.dir() + "/cgroup.procs";
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(procs.c_str(), O_WRONLY);
      if (fd < 0 || write(fd, "0", 1) != 1) _exit(1);
      close(fd);
      for (;;) {
        const auto end = std::chrono::steady_clock::now() + 1ms;
        while (std::chrono::steady_clock::now() < end) {
        }
        const timespec nap{0, 5'000'000};
        nanosleep(&nap, nullptr);
      }
    }
  }
  ~BusyInCgroup() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  BusyInCgroup(const BusyInCgroup&) = delete;
  BusyInCgroup& operator=(const BusyInCgroup&) = delete;

 private:
  pid_t pid_ = -1;
};

// Who-labels from real-looking layouts: a systemd service, a containerd container of a
// Kubernetes pod (systemd driver) and one of the cgroupfs driver, each with a process inside.
TEST_F(DaemonE2eTest, SystemdAndKubepodsCgroupsGetUnitContainerPodAndQosLabels) {
  const std::string uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
  std::string uid_underscores = uid;
  std::replace(uid_underscores.begin(), uid_underscores.end(), '-', '_');
  const std::string container = "4f3c2b1a" + std::string(56, 'e');
  const std::string other_container = "9a8b7c6d" + std::string(56, 'd');
  using test::TestCgroup;
  TestCgroup top("e2e");
  TestCgroup system_slice("system.slice", &top, true);
  TestCgroup service("kpulse-e2e-web.service", &system_slice, true);
  TestCgroup kubepods("kubepods.slice", &top, true);
  TestCgroup burstable("kubepods-burstable.slice", &kubepods, true);
  TestCgroup pod("kubepods-burstable-pod" + uid_underscores + ".slice", &burstable, true);
  TestCgroup scope("cri-containerd-" + container + ".scope", &pod, true);
  TestCgroup cgroupfs("kubepods", &top, true);
  TestCgroup besteffort("besteffort", &cgroupfs, true);
  TestCgroup fs_pod("pod" + uid, &besteffort, true);
  TestCgroup fs_container(other_container, &fs_pod, true);
  const uint16_t port = StartDaemon(kBaseConfig);
  ASSERT_NE(port, 0);
  BusyInCgroup in_service(service), in_scope(scope), in_fs_container(fs_container);

  // Labels that do not apply are left out (Prometheus reads an empty label as absent).
  const std::vector<std::string> service_labels = {"cgroup=\"" + service.path() + "\"",
                                                   "unit=\"kpulse-e2e-web.service\""};
  const std::vector<std::string> scope_labels = {
      "cgroup=\"" + scope.path() + "\"", "unit=\"cri-containerd-" + container + ".scope\"",
      "container_id=\"" + container + "\"", "pod_uid=\"" + uid + "\"", "qos=\"burstable\""};
  const std::vector<std::string> fs_labels = {"cgroup=\"" + fs_container.path() + "\"",
                                              "container_id=\"" + other_container + "\"",
                                              "pod_uid=\"" + uid + "\"", "qos=\"besteffort\""};
  std::string page;
  for (int attempt = 0; attempt < 50; ++attempt) {
    page = HttpGet("127.0.0.1", port, "/metrics");
    if (SumSamples(page, "kpulse_offcpu_seconds_total", fs_labels) > 0 &&
        SumSamples(page, "kpulse_offcpu_seconds_total", scope_labels) > 0 &&
        SumSamples(page, "kpulse_offcpu_seconds_total", service_labels) > 0) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  for (const auto* labels : {&service_labels, &scope_labels, &fs_labels}) {
    EXPECT_GT(SumSamples(page, "kpulse_offcpu_seconds_total", *labels), 0)
        << ::testing::PrintToString(*labels) << "\n"
        << page;
    EXPECT_GT(SumSamples(page, "kpulse_runqueue_latency_seconds_count", *labels), 0)
        << ::testing::PrintToString(*labels);
  }
  // ... and never guessed: the service has no container or pod labels, the cgroupfs container no
  // unit.
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("cgroup=\"" + service.path() + "\"") != std::string::npos) {
      EXPECT_EQ(line.find("container_id="), std::string::npos) << line;
      EXPECT_EQ(line.find("pod_uid="), std::string::npos) << line;
      EXPECT_EQ(line.find("qos="), std::string::npos) << line;
    }
    if (line.find("cgroup=\"" + fs_container.path() + "\"") != std::string::npos) {
      EXPECT_EQ(line.find("unit="), std::string::npos) << line;
    }
  }
  std::ofstream(dir_.path() / "page.txt") << page;
  const RunResult promtool =
      RunCommand("promtool check metrics < " + (dir_.path() / "page.txt").string());
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;
}

TEST_F(DaemonE2eTest, RealPrometheusScrapesTheTargetUp) {
  const uint16_t port = StartDaemon(kBaseConfig);
  ASSERT_NE(port, 0);
  const uint16_t prometheus_port = FreePort();
  const fs::path prometheus_yml = dir_.path() / "prometheus.yml";
  std::ofstream(prometheus_yml) << "global:\n  scrape_interval: 1s\n"
                                   "scrape_configs:\n  - job_name: kpulse\n"
                                   "    static_configs:\n      - targets: ['127.0.0.1:"
                                << port << "']\n";
  Process prometheus({"/usr/bin/prometheus", "--config.file=" + prometheus_yml.string(),
                      "--storage.tsdb.path=" + (dir_.path() / "tsdb").string(),
                      "--web.listen-address=127.0.0.1:" + std::to_string(prometheus_port)},
                     {}, dir_.path() / "prometheus.log");
  std::string up, series;
  for (int attempt = 0; attempt < 60; ++attempt) {
    std::this_thread::sleep_for(500ms);
    up = HttpGet("127.0.0.1", prometheus_port, "/api/v1/query?query=up%7Bjob%3D%22kpulse%22%7D");
    if (up.find("\"1\"]") != std::string::npos) break;
  }
  EXPECT_THAT(up, HasSubstr("\"1\"]")) << up << "\n" << ReadFile(dir_.path() / "prometheus.log");
  series = HttpGet("127.0.0.1", prometheus_port,
                   "/api/v1/query?query=kpulse_tcp_retransmits_total%7Bkind%3D%22syn%22%7D");
  EXPECT_THAT(series, HasSubstr("\"kind\":\"syn\""));
  EXPECT_EQ(prometheus.Stop(SIGTERM, 10s), 0);
}

TEST_F(DaemonE2eTest, ServesIpv4AndIpv6Together) {
  const uint16_t port = StartDaemon("http:\n  listen_addresses: [\"127.0.0.1:0\", \"[::1]:0\"]\n");
  ASSERT_NE(port, 0);
  std::smatch match;
  ASSERT_TRUE(std::regex_search(status_, match, std::regex(R"(\[::1\]:(\d+))"))) << status_;
  const auto v6_port = static_cast<uint16_t>(std::stoi(match[1]));
  EXPECT_EQ(HttpGet("127.0.0.1", port, "/healthz"), "ok\n");
  EXPECT_EQ(HttpGet("::1", v6_port, "/healthz"), "ok\n");
}

TEST_F(DaemonE2eTest, WatchdogPingsAndCleanStopDetachesEverything) {
  const uint16_t port = StartDaemon(kBaseConfig, {"WATCHDOG_USEC=400000"});
  ASSERT_NE(port, 0);
  EXPECT_TRUE(RetransProgramsLoaded());
  EXPECT_FALSE(notify_->WaitFor("WATCHDOG=1", 2s).empty()) << "no watchdog ping within 2 s";
  EXPECT_EQ(daemon_->Stop(SIGTERM, 10s), 0);
  EXPECT_FALSE(notify_->WaitFor("STOPPING=1", 1s).empty());
  // The kernel frees a program after an RCU grace period once its last fd is closed, so its id
  // can stay visible for a moment after the process exited.
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = !RetransProgramsLoaded();
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(gone) << "programs still loaded 2 s after SIGTERM";
}

TEST_F(DaemonE2eTest, DebugOffcpuServesFoldedStacksOnlyWhenEnabled) {
  const uint16_t off = StartDaemon(kBaseConfig);
  ASSERT_NE(off, 0);
  EXPECT_THAT(HttpGet("127.0.0.1", off, "/debug/offcpu"), HasSubstr("stacks are off"));
  EXPECT_EQ(daemon_->Stop(SIGTERM, 10s), 0);

  const auto daemon_started = std::chrono::steady_clock::now();
  const uint16_t on = StartDaemon(std::string(kBaseConfig) +
                                  "probes:\n  offcpu:\n    stacks:\n      enabled: true\n");
  ASSERT_NE(on, 0);
  std::this_thread::sleep_for(500ms);  // The truth: this thread sleeps at least 500 ms.
  const std::string folded = HttpGet("127.0.0.1", on, "/debug/offcpu?state=sleep");
  const double wall_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - daemon_started)
          .count();
  // Folded lines: "process;frame;...;frame <microseconds>". A process name may hold spaces
  // ("[pid 3445]" for one that exited, or its comm).
  EXPECT_THAT(folded, ::testing::ContainsRegex("^[^;\n]+(;[^;\n]+)+ [0-9]+\n"));
  // This process's sleeps since the probe attached: the 500 ms nap, plus any of StartDaemon's
  // polling naps above the stack threshold, all in clock_nanosleep. At least the nap (less
  // 1 ms for the syscall's way from arming the timer to switching out), at most the wall time
  // since StartDaemon began. The innermost frames are the syscall's own, not the scheduler's.
  double slept_us = 0;
  std::istringstream lines(folded);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("kpulse_e2e_test;") || line.find("clock_nanosleep") == line.npos) {
      continue;
    }
    const size_t value = line.rfind(' ');
    const std::string innermost =
        line.substr(line.rfind(';', value) + 1, value - line.rfind(';', value) - 1);
    EXPECT_NE(innermost, "schedule") << line;
    EXPECT_NE(innermost, "__schedule") << line;
    slept_us += std::stod(line.substr(value + 1));
  }
  EXPECT_GE(slept_us, 499'000.0) << folded;
  EXPECT_LE(slept_us, wall_us) << folded;
  EXPECT_THAT(HttpGet("127.0.0.1", on, "/debug/offcpu?state=bogus"), HasSubstr("state must be"));
}

TEST_F(DaemonE2eTest, TracepointFallbackForcedByConfig) {
  const uint16_t port =
      StartDaemon(std::string(kBaseConfig) + "probes:\n  tcp_retransmit:\n    hook: tracepoint\n");
  ASSERT_NE(port, 0);
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/metrics"),
              HasSubstr("kpulse_probe_info{probe=\"tcp_retransmit\",hook=\"tracepoint\"} 1"));
}

// Command line: no root needed.
TEST(KpulseCommandLine, CheckConfigAcceptsTheShippedConfig) {
  const RunResult result = RunCommand(std::string(KPULSE_BINARY) +
                                      " --check-config " KPULSE_SOURCE_DIR "/config/kpulse.yaml");
  EXPECT_EQ(result.exit_code, 0) << result.output;
}

TEST(KpulseCommandLine, CheckConfigRejectsABadValueWithFileLineAndKey) {
  TempDir dir;
  const fs::path bad = dir.path() / "bad.yaml";
  std::ofstream(bad) << "probes:\n  tcp_retransmit:\n    max_flows: 0\n";
  const RunResult result =
      RunCommand(std::string(KPULSE_BINARY) + " --check-config " + bad.string());
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, HasSubstr(bad.string() + ":3:"));
  EXPECT_THAT(result.output, HasSubstr("probes.tcp_retransmit.max_flows"));
  EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
}

TEST(KpulseCommandLine, MissingConfigFileIsAnErrorNamingThePath) {
  const RunResult result =
      RunCommand(std::string(KPULSE_BINARY) + " --config /nonexistent/kpulse.yaml");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, HasSubstr("/nonexistent/kpulse.yaml"));
}

TEST(KpulseCommandLine, PrintsVersion) {
  const RunResult result = RunCommand(std::string(KPULSE_BINARY) + " --version");
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("kpulse 0."));
}

// The capabilities docs/operations.md ("Privileges after start-up") says a configuration keeps:
// the `kept:` cell of the row whose first cell contains `row`.
std::vector<cap_value_t> DocumentedKeptCaps(const std::string& row) {
  const std::string doc = ReadFile(fs::path(KPULSE_SOURCE_DIR) / "docs/operations.md");
  std::istringstream lines(doc);
  for (std::string line; std::getline(lines, line);) {
    const size_t kept = line.find("| kept: ");
    if (line.rfind("| ", 0) != 0 || kept == std::string::npos) continue;
    if (line.substr(0, kept).find(row) == std::string::npos) continue;
    std::string names = line.substr(kept + 8);
    names = names.substr(0, names.find(" |"));
    std::vector<cap_value_t> caps;
    if (names == "none") return caps;
    std::istringstream list(names);
    for (std::string name; std::getline(list, name, ',');) {
      name.erase(0, name.find_first_not_of(' '));  // "a, b"
      cap_value_t cap = 0;
      EXPECT_EQ(cap_from_name(name.c_str(), &cap), 0) << "docs name an unknown capability " << name;
      caps.push_back(cap);
    }
    return caps;
  }
  ADD_FAILURE() << "docs/operations.md has no `kept:` row for " << row;
  return {};
}

// Every thread of the running daemon, after READY=1 and a scrape (the HTTP threads exist), holds
// exactly what docs/operations.md says.
void ExpectThreadsHoldExactly(pid_t pid, const std::vector<cap_value_t>& kept) {
  const auto threads = ReadThreadCaps(pid);
  ASSERT_TRUE(threads.has_value()) << threads.error().message;
  EXPECT_GE(threads->size(), 2u) << "the HTTP server's threads should be running";
  const uint64_t mask = CapMask(kept);
  for (const ThreadCaps& thread : *threads) {
    SCOPED_TRACE("tid " + std::to_string(thread.tid));
    EXPECT_EQ(thread.eff, mask);
    EXPECT_EQ(thread.prm, mask);
    EXPECT_EQ(thread.inh, 0u);
    EXPECT_EQ(thread.amb, 0u);
    EXPECT_EQ(thread.bnd, mask) << "started as root (CAP_SETPCAP): the bounding set is cut too";
    EXPECT_TRUE(thread.no_new_privs);
  }
}

TEST_F(DaemonE2eTest, PrivilegesAfterStartupAreWhatTheDocsSayInEveryThread) {
  const uint16_t port = StartDaemon(kBaseConfig);
  ASSERT_NE(port, 0);
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/metrics"), HasSubstr("kpulse_probe_up"));
  ExpectThreadsHoldExactly(daemon_->pid(), DocumentedKeptCaps("default"));
}

TEST_F(DaemonE2eTest, PrivilegesAfterStartupWithoutFileHandlesKeepNothingAndStillNameCgroups) {
  test::TestCgroup cgroup("privwalk");
  BusyInCgroup busy(cgroup);  // gives the cgroup run-queue and off-CPU samples to label
  const uint16_t port =
      StartDaemon(std::string(kBaseConfig) + "privileges:\n  cgroup_file_handles: false\n");
  ASSERT_NE(port, 0);
  std::string page;
  for (int attempt = 0; attempt < 50; ++attempt) {
    page = HttpGet("127.0.0.1", port, "/metrics");
    if (page.find("cgroup=\"" + cgroup.path() + "\"") != std::string::npos) break;
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_THAT(page, HasSubstr("cgroup=\"" + cgroup.path() + "\""))
      << "without CAP_DAC_READ_SEARCH the resolver walks the tree: the cgroup is still named";
  ExpectThreadsHoldExactly(daemon_->pid(), DocumentedKeptCaps("cgroup_file_handles: false"));
}

// SIGTERM while /debug/offcpu?seconds=30 windows run: they are cut short (503), the daemon exits
// 0 within 2 s; a fifth window beyond the four allowed at once is 503 at once, and a scrape
// meanwhile is answered.
TEST_F(DaemonE2eTest, SigtermCutsDebugWindowsShortAndExitsWithinTwoSeconds) {
  const uint16_t port = StartDaemon(std::string(kBaseConfig) +
                                    "probes:\n  offcpu:\n    stacks:\n      enabled: true\n");
  ASSERT_NE(port, 0);
  std::vector<std::thread> windows;
  std::vector<std::string> answers(4);
  for (size_t i = 0; i < answers.size(); ++i) {
    windows.emplace_back(
        [&, i] { answers[i] = HttpGet("127.0.0.1", port, "/debug/offcpu?seconds=30"); });
  }
  std::this_thread::sleep_for(500ms);  // all four are in their window
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/debug/offcpu?seconds=30"),
              HasSubstr("too many concurrent requests"))
      << "a fifth concurrent window is refused";
  const auto scrape_start = std::chrono::steady_clock::now();
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/metrics"), HasSubstr("kpulse_probe_up"));
  EXPECT_LT(std::chrono::steady_clock::now() - scrape_start, 1s);
  const auto stop_start = std::chrono::steady_clock::now();
  EXPECT_EQ(daemon_->Stop(SIGTERM, 2s), 0) << "no clean exit within 2 s of SIGTERM";
  const auto took = std::chrono::steady_clock::now() - stop_start;
  for (auto& window : windows) window.join();
  EXPECT_LT(took, 2s);
  for (const std::string& answer : answers) EXPECT_THAT(answer, HasSubstr("cut short"));
}

// Kernel stacks are sensitive: with a listener that is not loopback and no authentication in
// the web config, /debug/offcpu answers 403 on every listener (the loopback one too).
TEST_F(DaemonE2eTest, DebugOffcpuIsRefusedWithoutAuthWhenAListenerIsNotLoopback) {
  const uint16_t port = StartDaemon(
      "http:\n  listen_addresses: [\"127.0.0.1:0\", \"0.0.0.0:0\"]\n"
      "probes:\n  offcpu:\n    stacks:\n      enabled: true\n");
  ASSERT_NE(port, 0);
  const std::string answer = HttpGet("127.0.0.1", port, "/debug/offcpu");
  EXPECT_THAT(answer, HasSubstr("served only when every listen address is loopback"));
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/metrics"), HasSubstr("kpulse_probe_up"));
  EXPECT_THAT(ReadFile(dir_.path() / "kpulse.log"), HasSubstr("/debug/offcpu is not served"));
}

// --- Reload (SIGHUP). ---

// SYN retransmits made in a namespace of the test's own (one retry per connect to a port whose
// SYNs are dropped), read back from kpulse's per-flow series of that namespace (netns_label on).
class ReloadE2eTest : public DaemonE2eTest {
 protected:
  void SetUp() override {
    DaemonE2eTest::SetUp();
    ns_ = std::make_unique<test::NetNs>("reload");
    ns_->Sysctl("net.ipv4.tcp_syn_linear_timeouts", "0");
    ns_->Sysctl("net.ipv4.tcp_syn_retries", "1");
    ns_->Nft(test::NftDropInput("tcp dport 7100 tcp flags & (syn|ack) == syn"));
    before_ = test::ReadTcpCounters(ns_.get());
  }

  // `connects` failed connects; returns the namespace's TCPSynRetrans since SetUp (the truth).
  uint64_t Storm(int connects) {
    test::Child storm(*ns_, nullptr,
                      [connects] { return test::ConnectMany("127.0.0.1", 7100, connects, 10000); });
    EXPECT_EQ(storm.Wait(), connects);
    return test::ReadTcpCounters(ns_.get()).syn_retrans - before_.syn_retrans;
  }

  double ScrapedSyn(uint16_t port) {
    return SumSamples(
        HttpGet("127.0.0.1", port, "/metrics"), "kpulse_tcp_flow_retransmits_total",
        {"netns=\"" + std::to_string(ns_->inode()) + "\"", "kind=\"syn\"", "rport=\"7100\""});
  }

  // Rewrites the config file, sends SIGHUP and waits for RELOADING=1 then READY=1; returns
  // the READY message.
  std::string Reload(const std::string& yaml) {
    std::ofstream(config_) << yaml;
    kill(daemon_->pid(), SIGHUP);
    const std::string reloading = notify_->WaitFor("RELOADING=1", 10s);
    EXPECT_THAT(reloading, ::testing::ContainsRegex("MONOTONIC_USEC=[0-9]+"));
    const std::string ready = notify_->WaitFor("READY=1", 20s);
    EXPECT_FALSE(ready.empty()) << "no READY=1 after the reload; log:\n" << Log();
    return ready;
  }

  std::string Log() const { return ReadFile(dir_.path() / "kpulse.log"); }

  static double Gauge(const std::string& page, const std::string& sample) {
    const size_t at = page.find("\n" + sample + " ");
    if (at == std::string::npos) return -1;
    return std::stod(page.substr(at + sample.size() + 2));
  }

  std::unique_ptr<test::NetNs> ns_;
  test::TcpCounters before_;
};

constexpr const char* kReloadBase =
    "log_level: info\n"
    "http:\n"
    "  listen_addresses: [\"127.0.0.1:0\"]\n"
    "probes:\n"
    "  tcp_retransmit:\n"
    "    netns_label: true\n";

// Export-side changes (cgroup depth, series cap) apply without touching the probes: the flow
// counter goes on from where it was, equal to the kernel's count across the reload.
TEST_F(ReloadE2eTest, ExportSideReloadKeepsCountersExactAcrossIt) {
  const uint16_t port = StartDaemon(kReloadBase);
  ASSERT_NE(port, 0);
  const uint64_t truth_before = Storm(3);
  ASSERT_EQ(truth_before, 3u) << "setup: 3 connects x 1 retry";
  EXPECT_EQ(ScrapedSyn(port), static_cast<double>(truth_before));
  const std::string first_page = HttpGet("127.0.0.1", port, "/metrics");
  const double loaded_at = Gauge(first_page, "kpulse_config_last_reload_success_timestamp_seconds");
  EXPECT_EQ(Gauge(first_page, "kpulse_config_last_reload_successful"), 1);

  const std::string ready = Reload(std::string(kReloadBase) +
                                   "cgroups:\n  depth: 1\nseries:\n  max_series_per_family: 100\n");
  EXPECT_THAT(ready, HasSubstr("3/3 probes attached"));
  const uint64_t truth_after = Storm(4);
  ASSERT_EQ(truth_after, 7u);
  const std::string page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(ScrapedSyn(port), static_cast<double>(truth_after))
      << "the counter went on across the reload, exactly as the kernel counted";
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 1);
  EXPECT_GT(Gauge(page, "kpulse_config_last_reload_success_timestamp_seconds"), loaded_at);
  EXPECT_THAT(Log(), HasSubstr("reloaded "));
  // cgroups.depth: 1 applied by the scrape: no cgroup label below the first level.
  const std::regex deep(R"re(cgroup="/[^/"<]+/)re");
  EXPECT_FALSE(std::regex_search(page, deep)) << page;
  EXPECT_EQ(daemon_->Stop(SIGTERM, 5s), 0);
}

// A bad file on reload: one line naming file, line and key; the running configuration, its
// probes and counters stay; kpulse_config_last_reload_successful 0; the next good reload is 1.
TEST_F(ReloadE2eTest, BadConfigOnReloadKeepsTheRunningConfigAndItsCounters) {
  const uint16_t port = StartDaemon(kReloadBase);
  ASSERT_NE(port, 0);
  ASSERT_EQ(Storm(2), 2u);
  const double loaded_at = Gauge(HttpGet("127.0.0.1", port, "/metrics"),
                                 "kpulse_config_last_reload_success_timestamp_seconds");

  Reload("probes:\n  tcp_retransmit:\n    max_flows: 0\n");
  const std::string log = Log();
  const std::string prefix =
      "reload failed, the running configuration is kept: " + config_.string() + ":3:";
  EXPECT_THAT(log, HasSubstr(prefix));
  EXPECT_THAT(log, HasSubstr("probes.tcp_retransmit.max_flows"));
  const size_t error_line = log.find(prefix);
  EXPECT_EQ(log.find('\n', error_line), log.find("\n", log.find("max_flows", error_line)))
      << "one line";
  std::string page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 0);
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_success_timestamp_seconds"), loaded_at);
  EXPECT_THAT(page, HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"} 1"));
  // Still counting under the old configuration (netns_label, which the bad file did not set).
  EXPECT_EQ(ScrapedSyn(port), static_cast<double>(Storm(3)));

  Reload(kReloadBase);
  page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 1);
  EXPECT_EQ(ScrapedSyn(port), 5.0);
}

// Loading a probe after the drop needs CAP_BPF + CAP_PERFMON: refused by default (the change
// waits for a restart), done with privileges.reload_attach: true, whose kept set the docs list.
TEST_F(ReloadE2eTest, ReloadAttachOffRefusesToLoadAProbeAndSaysWhy) {
  const std::string off = std::string(kReloadBase) + "    enabled: false\n";
  const uint16_t port = StartDaemon(off);
  ASSERT_NE(port, 0);
  EXPECT_THAT(status_, HasSubstr("2/2 probes attached"));
  Reload(kReloadBase);
  EXPECT_THAT(Log(), HasSubstr("loads probe(s) tcp_retransmit"));
  EXPECT_THAT(Log(), HasSubstr("privileges.reload_attach: true"));
  const std::string page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 0);
  EXPECT_THAT(page, Not(HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"}")));
  ExpectThreadsHoldExactly(daemon_->pid(), DocumentedKeptCaps("default"));
}

TEST_F(ReloadE2eTest, ReloadAttachOnLoadsProbesAfterTheDropAndTheyCountExactly) {
  const std::string privileges = "privileges:\n  reload_attach: true\n";
  const uint16_t port = StartDaemon(std::string(kReloadBase) + "    enabled: false\n" + privileges);
  ASSERT_NE(port, 0);
  ExpectThreadsHoldExactly(daemon_->pid(), DocumentedKeptCaps("reload_attach: true"));

  // Switched on by a reload: attached with the kept capabilities, counting from then on.
  const std::string ready = Reload(std::string(kReloadBase) + privileges);
  EXPECT_THAT(ready, HasSubstr("3/3 probes attached")) << Log();
  const uint64_t truth = Storm(3);
  ASSERT_EQ(truth, 3u);
  std::string page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 1);
  EXPECT_THAT(page, HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"} 1"));
  EXPECT_EQ(ScrapedSyn(port), 3.0);

  // A kernel-side change (max_flows) loads the probe again: its counters start over, as
  // docs/operations.md says.
  Reload(std::string(kReloadBase) + "    max_flows: 1024\n" + privileges);
  page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 1);
  EXPECT_EQ(Gauge(page, "kpulse_bpf_map_capacity{map=\"retrans_flows\"}"), 1024) << page;
  EXPECT_EQ(ScrapedSyn(port), 0.0) << "a reloaded probe starts over";
  EXPECT_EQ(Storm(2), 5u);
  EXPECT_EQ(ScrapedSyn(port), 2.0);
  ExpectThreadsHoldExactly(daemon_->pid(), DocumentedKeptCaps("reload_attach: true"));
}

// Switching a probe off needs no capability: its programs are detached and unloaded (the
// kernel's program list is the truth), its series leave /metrics, the others go on.
TEST_F(ReloadE2eTest, SwitchingAProbeOffDetachesItWithoutCapabilities) {
  const uint16_t port = StartDaemon(kReloadBase);
  ASSERT_NE(port, 0);
  ASSERT_TRUE(RetransProgramsLoaded());
  const std::string ready = Reload(std::string(kReloadBase) + "    enabled: false\n");
  EXPECT_THAT(ready, HasSubstr("2/2 probes attached"));
  const std::string page = HttpGet("127.0.0.1", port, "/metrics");
  EXPECT_EQ(Gauge(page, "kpulse_config_last_reload_successful"), 1);
  EXPECT_THAT(page, Not(HasSubstr("kpulse_tcp_retransmits_total")));
  EXPECT_THAT(page, Not(HasSubstr("kpulse_probe_up{probe=\"tcp_retransmit\"}")));
  EXPECT_THAT(page, HasSubstr("kpulse_probe_up{probe=\"runqueue_latency\"} 1"));
  // Freed after an RCU grace period once the last fd closed (as after SIGTERM, above).
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = !RetransProgramsLoaded();
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(gone) << "retransmit programs still loaded 2 s after the reload";
}

}  // namespace
}  // namespace kpulse
