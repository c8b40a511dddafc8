#include "service/daemon.h"

#include <bpf/bpf.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bpf/libbpf_log.h"
#include "cgroup/cgroup_labeler.h"
#include "cgroup/cgroup_resolver.h"
#include "collect/http_collector.h"
#include "collect/self_collector.h"
#include "config/config.h"
#include "http/http_server.h"
#include "http/metrics_handler.h"
#include "http/web_config.h"
#include "service/cgroup_sweeper.h"
#include "service/privileges.h"
#include "service/probe_manager.h"
#include "service/systemd_notify.h"
#include "util/unique_fd.h"
#include "version.h"

namespace kpulse {

namespace {

// /debug/offcpu?seconds=N requests served at once (each holds a thread for the window).
constexpr unsigned kMaxConcurrentDebugWindows = 4;

// Owns the signalfd that replaces asynchronous signal handlers.
class SignalFd {
 public:
  SignalFd() {
    sigemptyset(&set_);
    for (int signal : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, signal);
    // Blocked before any thread starts, so every later thread inherits the mask.
    if (pthread_sigmask(SIG_BLOCK, &set_, nullptr) != 0) {
      throw std::runtime_error("blocking signals failed");
    }
    fd_ = UniqueFd(signalfd(-1, &set_, SFD_CLOEXEC));
    if (!fd_.valid()) throw std::runtime_error(std::string("signalfd failed: ") + strerror(errno));
  }

  /// Waits up to `timeout_ms` (-1: forever); returns the signal number, or 0 on timeout.
  int Wait(int timeout_ms) const {
    pollfd pfd{fd_.get(), POLLIN, 0};
    const int ready = poll(&pfd, 1, timeout_ms);
    if (ready <= 0) return 0;
    signalfd_siginfo info{};
    if (read(fd_.get(), &info, sizeof(info)) != sizeof(info)) return 0;
    return static_cast<int>(info.ssi_signo);
  }

 private:
  sigset_t set_{};
  UniqueFd fd_;
};

// Kernel BPF run-time statistics stay on while the returned fd lives (BPF_ENABLE_STATS is
// refcounted by the kernel: other users of kernel.bpf_stats_enabled are unaffected).
UniqueFd HoldBpfStats(bool enable) {
  if (!enable) return UniqueFd();
  UniqueFd fd(bpf_enable_stats(BPF_STATS_RUN_TIME));
  if (!fd.valid()) spdlog::warn("enabling BPF run-time stats failed: {}", strerror(errno));
  return fd;
}

// The cgroup2 hierarchy's resolver, or null when none is usable: every cgroup label is then
// "<unknown>" and nothing is swept; the probes still count.
std::shared_ptr<CgroupResolver> MakeCgroupResolver() {
  auto root = FindCgroup2Mount();
  if (!root) {
    spdlog::warn("no cgroup2 mount in /proc/self/mountinfo; cgroup labels will be <unknown>");
    return nullptr;
  }
  try {
    auto resolver = std::make_shared<CgroupResolver>(*root);
    spdlog::info("cgroup v2 hierarchy at {}", *root);
    return resolver;
  } catch (const std::system_error& e) {
    spdlog::warn("cgroup v2 hierarchy at {} is not usable ({}); cgroup labels will be <unknown>",
                 *root, e.what());
    return nullptr;
  }
}

std::shared_ptr<const CgroupLabeler> MakeCgroupLabeler(std::shared_ptr<CgroupResolver> resolver,
                                                       const CgroupsConfig& config) {
  CgroupPathLookup lookup;
  if (resolver) lookup = [resolver](uint64_t id) { return resolver->PathOf(id); };
  return std::make_shared<const CgroupLabeler>(
      std::move(lookup), CgroupLabelPolicy{config.depth, config.allow, config.deny});
}

SeriesPolicy MakeSeriesPolicy(const SeriesConfig& config) {
  return SeriesPolicy{config.max_series_per_family, std::chrono::seconds(config.idle_ttl_seconds)};
}

// Every probe is attached and nothing but this thread runs yet (the HTTP server starts after):
// what is dropped here is gone from every thread the daemon will have. A failed drop may leave
// the thread half-dropped, so it is fatal. Returns whether probes can still be loaded.
bool DropPrivilegesAfterAttach(const Config& config, bool have_resolver) {
  const PrivilegesConfig& privileges = config.privileges;
  if (!privileges.drop) {
    spdlog::warn("privileges.drop is false: kpulse keeps every capability it started with");
    return true;
  }
  PrivilegeNeeds needs;
  needs.cgroup_file_handles = have_resolver && privileges.cgroup_file_handles;
  needs.reload_attach = privileges.reload_attach;
  needs.symbolize_user_stacks =
      config.offcpu.enabled && config.offcpu.stacks.enabled && config.offcpu.stacks.user;
  needs.user = privileges.user;
  auto dropped = DropPrivileges(PlanPrivileges(needs));
  if (!dropped) throw std::runtime_error("dropping privileges failed: " + dropped.error().message);
  LogDroppedPrivileges(*dropped);
  return privileges.reload_attach;
}

bool IsLoopback(const ListenAddress& address) {
  if (address.family() == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address.storage);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (address.family() == AF_INET6 && !address.dual_stack) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address.storage);
    return IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr);
  }
  return false;
}

// Kernel stacks name what every process on the node is doing: /debug/* is served only when
// every listener is loopback, or when clients must authenticate (basic auth, or a verified
// client certificate).
bool DebugEndpointsAllowed(const HttpConfig& http, const WebConfig& web) {
  const bool loopback_only =
      std::all_of(http.listen_addresses.begin(), http.listen_addresses.end(), IsLoopback);
  const bool verified_clients =
      web.tls && web.tls->client_auth == ClientAuth::kRequireAndVerifyClientCert;
  return loopback_only || !web.basic_auth_users.empty() || verified_clients;
}

bool SameHttp(const HttpConfig& a, const HttpConfig& b) {
  const auto texts = [](const HttpConfig& http) {
    std::vector<std::string> out;
    for (const ListenAddress& address : http.listen_addresses) out.push_back(address.text);
    return out;
  };
  return texts(a) == texts(b) && a.connection_timeout_seconds == b.connection_timeout_seconds &&
         a.max_connections == b.max_connections;
}

// Settings read once at start-up: why `next` cannot be applied by a reload (empty: it can).
std::string RestartOnlyChange(const Config& running, const Config& next) {
  if (!(running.privileges == next.privileges)) {
    return "privileges: changes take effect at the next start (dropped capabilities cannot come "
           "back)";
  }
  if (running.bpf_stats != next.bpf_stats) {
    return "bpf_stats: a change takes effect at the next start (needs CAP_SYS_ADMIN)";
  }
  const bool user_before = running.offcpu.stacks.enabled && running.offcpu.stacks.user;
  const bool user_after = next.offcpu.stacks.enabled && next.offcpu.stacks.user;
  if (user_after && !user_before && next.privileges.drop) {
    return "probes.offcpu.stacks.user: turning user stacks on needs a restart (CAP_SYS_PTRACE "
           "is dropped after start-up)";
  }
  return "";
}

// The daemon's parts, in the order they are built; destroyed in reverse, so the HTTP server
// (whose handlers use everything else) goes first and the probes detach after it.
class Daemon {
 public:
  Daemon(Config config, WebConfig web, const SystemdNotifier& systemd)
      : config_(std::move(config)),
        web_(std::move(web)),
        systemd_(systemd),
        resolver_(MakeCgroupResolver()),
        sweeper_(std::make_shared<CgroupSweeper>(resolver_)),
        self_(std::make_shared<SelfCollector>()),
        http_stats_(std::make_shared<HttpCollector>([this] { return CurrentHttpStats(); })),
        probes_(metrics_, *sweeper_, *self_) {}

  void AttachProbes() {
    bpf_stats_ = HoldBpfStats(config_.bpf_stats);
    probes_.Start(config_, Exports(config_));
    metrics_.Add(self_);
    metrics_.Add(sweeper_);
    metrics_.Add(http_stats_);
  }

  void DropPrivileges() {
    can_load_probes_ = DropPrivilegesAfterAttach(config_, resolver_ != nullptr);
  }

  void StartHttp() {
    auto server = MakeServer(config_, web_);
    server->Start();
    const std::lock_guard lock(server_mutex_);
    server_ = std::move(server);
  }

  // One line for the log and systemd's STATUS=.
  std::string StatusLine() const {
    std::string listening;
    std::vector<uint16_t> ports;
    {
      const std::lock_guard lock(server_mutex_);
      if (server_) ports = server_->BoundPorts();
    }
    // Name the ports actually bound (a configured port 0 means "any free port").
    for (size_t i = 0; i < config_.http.listen_addresses.size() && i < ports.size(); ++i) {
      const std::string& text = config_.http.listen_addresses[i].text;
      listening += (listening.empty() ? "" : ", ") + text.substr(0, text.rfind(':') + 1) +
                   std::to_string(ports[i]);
    }
    const std::vector<ProbeStatus> statuses = probes_.Statuses();
    const auto up = std::count_if(statuses.begin(), statuses.end(),
                                  [](const ProbeStatus& status) { return status.up; });
    return "serving /metrics on " + listening + "; " + std::to_string(up) + "/" +
           std::to_string(statuses.size()) + " probes attached";
  }

  // Until SIGINT or SIGTERM: the watchdog (at half its interval), the cgroup sweep, and SIGHUP.
  void Run(const SignalFd& signals) {
    const auto watchdog = systemd_.watchdog_interval();
    auto next_sweep = Clock::now() + SweepInterval();
    for (;;) {
      int wait_ms = static_cast<int>(std::max<Clock::rep>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(next_sweep - Clock::now())
                 .count()));
      if (watchdog) wait_ms = std::min(wait_ms, static_cast<int>(watchdog->count() / 2000));
      const int signal = signals.Wait(wait_ms);
      if (watchdog) systemd_.WatchdogPing();
      if (Clock::now() >= next_sweep) {
        sweeper_->SweepNow();
        next_sweep = Clock::now() + SweepInterval();
      }
      if (signal == SIGINT || signal == SIGTERM) {
        spdlog::info("received {}, stopping", strsignal(signal));
        return;
      }
      if (signal == SIGHUP) {
        Reload();
        next_sweep = std::min(next_sweep, Clock::now() + SweepInterval());
      }
    }
  }

  // Running /debug/offcpu windows see the stop and return; in-flight scrapes finish.
  void Stop() {
    systemd_.Stopping();
    std::shared_ptr<HttpServer> server;
    {
      const std::lock_guard lock(server_mutex_);
      server = server_;
    }
    if (server && !server->Stop(std::chrono::milliseconds(1500))) {
      spdlog::warn("stopping: a handler did not finish within 1.5 s and was answered 503");
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  std::chrono::seconds SweepInterval() const {
    return std::chrono::seconds(config_.cgroups.sweep_interval_seconds);
  }

  ExportSettings Exports(const Config& config) const {
    return {MakeCgroupLabeler(resolver_, config.cgroups), MakeSeriesPolicy(config.series)};
  }

  HttpStats CurrentHttpStats() const {
    std::shared_ptr<HttpServer> server;
    {
      const std::lock_guard lock(server_mutex_);
      server = server_;
    }
    return server ? server->Stats() : HttpStats{};
  }

  std::shared_ptr<HttpServer> MakeServer(const Config& config, const WebConfig& web) {
    HttpServer::Options options;
    options.listen = config.http.listen_addresses;
    options.connection_timeout_seconds = config.http.connection_timeout_seconds;
    options.max_connections = config.http.max_connections;
    options.web = web;
    auto server = std::make_shared<HttpServer>(std::move(options));
    server->Route("/metrics",
                  [this](const HttpRequest& request) { return metrics_.Render(request); });
    if (DebugEndpointsAllowed(config.http, web)) {
      // Windows hold a thread each for up to 60 s: a few at a time (503 beyond), never the
      // scrape's.
      server->Route(
          "/debug/offcpu",
          [this](const HttpRequest& request) { return probes_.ServeOffcpuStacks(request); },
          RouteOptions{kMaxConcurrentDebugWindows});
    } else {
      if (config.offcpu.enabled && config.offcpu.stacks.enabled) {
        spdlog::warn(
            "/debug/offcpu is not served: a listen address is not loopback and the web "
            "config asks for no authentication (basic_auth_users, or "
            "RequireAndVerifyClientCert)");
      }
      server->Route("/debug/offcpu", [](const HttpRequest&) {
        return HttpResponse{403, "text/plain; charset=utf-8",
                            "/debug/* is served only when every listen address is loopback, or "
                            "with authentication (web config: basic_auth_users or "
                            "RequireAndVerifyClientCert)\n"};
      });
    }
    server->Route("/healthz", [this](const HttpRequest&) {
      const std::string problems = probes_.HealthProblems();
      if (!problems.empty()) return HttpResponse{503, "text/plain; charset=utf-8", problems};
      return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
    });
    server->Route("/", [](const HttpRequest&) {
      return HttpResponse{
          200, "text/html; charset=utf-8",
          "<html><head><title>kpulse</title></head><body><h1>kpulse</h1><ul>"
          "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>"
          "<li><a href=\"/healthz\">/healthz</a>: probes attached, last read OK</li>"
          "<li><a href=\"/debug/offcpu\">/debug/offcpu</a>: folded off-CPU stacks "
          "(when enabled)</li></ul></body></html>\n"};
    });
    return server;
  }

  // SIGHUP: RELOADING=1, then the new configuration wholly or (on any error) not at all, then
  // READY=1 with the status line.
  void Reload() {
    systemd_.Reloading();
    spdlog::info("SIGHUP: reloading {}", config_.source);
    const std::string error = TryReload();
    self_->RecordReload(error.empty(), std::chrono::system_clock::now());
    if (error.empty()) {
      spdlog::info("reloaded {}: {}", config_.source, StatusLine());
    } else {
      spdlog::error("reload failed, the running configuration is kept: {}", error);
    }
    systemd_.Ready(StatusLine());
  }

  // Empty on success; otherwise one line, and nothing changed (but see the HTTP step).
  std::string TryReload() {
    Config next;
    WebConfig next_web = web_;
    try {
      next = LoadConfigFile(config_.source);
      if (!web_.source.empty()) next_web = LoadWebConfigFile(web_.source);
    } catch (const ConfigError& e) {
      return e.what();
    } catch (const WebConfigError& e) {
      return e.what();
    }
    if (std::string why = RestartOnlyChange(config_, next); !why.empty()) return why;
    if (std::string why = probes_.NeedsRestart(next); !why.empty()) return why;
    const std::vector<std::string> load = probes_.ProbesToLoad(next);
    if (!load.empty() && !can_load_probes_) {
      std::string names;
      for (const std::string& name : load) names += (names.empty() ? "" : ", ") + name;
      return "the new configuration loads probe(s) " + names +
             " (switched on, or kernel-side settings changed), which needs CAP_BPF and "
             "CAP_PERFMON, dropped after start-up: restart kpulse, or set "
             "privileges.reload_attach: true";
    }
    if (auto applied = probes_.Apply(next, Exports(next)); !applied) return applied.error();
    spdlog::set_level(next.log_level);
    // A web-config file is read again on every reload (rotated certificates), so the server is
    // restarted with it; otherwise only when the http section changed.
    std::string http_error;
    if (!web_.source.empty() || !SameHttp(config_.http, next.http)) {
      http_error = RestartHttp(next, next_web);
    }
    // The probes run the new settings either way; the old http ones are served again if the new
    // ones could not listen.
    if (http_error.empty()) {
      web_ = std::move(next_web);
    } else {
      next.http = config_.http;
    }
    config_ = std::move(next);
    return http_error;
  }

  // Stops the server (its in-flight requests finish or are cut short) and starts one with the
  // new settings; if that cannot listen, the old settings are served again.
  std::string RestartHttp(const Config& next, const WebConfig& next_web) {
    std::shared_ptr<HttpServer> old;
    {
      const std::lock_guard lock(server_mutex_);
      old = server_;
    }
    old->Stop(std::chrono::milliseconds(1500));
    http_stats_->Rebase();
    try {
      auto server = MakeServer(next, next_web);
      server->Start();
      const std::lock_guard lock(server_mutex_);
      server_ = std::move(server);
      return "";
    } catch (const std::runtime_error& e) {
      const std::string error = std::string("http: ") + e.what() +
                                "; serving with the previous http settings and web config";
      auto server = MakeServer(config_, web_);
      server->Start();  // Listened a moment ago; if it cannot now, kpulse stops (exit 1).
      const std::lock_guard lock(server_mutex_);
      server_ = std::move(server);
      return error;
    }
  }

  Config config_;  // The configuration running; replaced whole by a reload.
  WebConfig web_;
  const SystemdNotifier& systemd_;
  UniqueFd bpf_stats_;
  const std::shared_ptr<CgroupResolver> resolver_;
  const std::shared_ptr<CgroupSweeper> sweeper_;
  const std::shared_ptr<SelfCollector> self_;
  const std::shared_ptr<HttpCollector> http_stats_;
  MetricsEndpoint metrics_;
  ProbeManager probes_;
  bool can_load_probes_ = true;
  mutable std::mutex server_mutex_;  // Guards server_ (read by scrapes for its stats).
  std::shared_ptr<HttpServer> server_;
};

}  // namespace

int RunDaemon(const Config& config, const WebConfig& web) {
  SignalFd signals;
  SystemdNotifier systemd;
  RouteLibbpfLogToSpdlog();
  spdlog::info("kpulse {} starting with {}", kVersion, config.source);

  Daemon daemon(config, web, systemd);
  daemon.AttachProbes();
  daemon.DropPrivileges();
  daemon.StartHttp();
  const std::string status = daemon.StatusLine();
  spdlog::info("{}", status);
  systemd.Ready(status);
  daemon.Run(signals);
  daemon.Stop();
  return 0;  // the server, collectors and probes are destroyed in reverse order: links detach
}

}  // namespace kpulse
