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
#include <stdexcept>
#include <system_error>

#include "bpf/libbpf_log.h"
#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "cgroup/cgroup_resolver.h"
#include "collect/bpf_program_collector.h"
#include "collect/offcpu_collector.h"
#include "collect/retrans_collector.h"
#include "collect/runqueue_collector.h"
#include "collect/self_collector.h"
#include "debug/offcpu_stacks.h"
#include "http/http_server.h"
#include "http/metrics_handler.h"
#include "service/cgroup_sweeper.h"
#include "service/privileges.h"
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

// Starts one probe: returns it, or nullptr when it failed and is not required (logged).
template <typename Probe, typename ProbeConfig>
std::unique_ptr<Probe> StartProbe(const char* name, const ProbeConfig& config,
                                  std::vector<ProbeStatus>& statuses) {
  if (!config.enabled) return nullptr;
  ProbeStatus status{name, false, ""};
  std::unique_ptr<Probe> probe;
  try {
    probe = Probe::Start(config);
    status.up = true;
    status.hook = std::string(probe->hook());
  } catch (const ProbeError& e) {
    if (config.required) throw;
    spdlog::error("{}; continuing without it (probes.{}.required is false)", e.what(), name);
  }
  statuses.push_back(status);
  return probe;
}

// The run-queue and off-CPU probes share one BPF object (one sched_switch program).
std::unique_ptr<SchedProbe> StartSchedProbe(const Config& config,
                                            std::vector<ProbeStatus>& statuses) {
  const RunqueueConfig& runq = config.runqueue_latency;
  const OffcpuConfig& offcpu = config.offcpu;
  if (!runq.enabled && !offcpu.enabled) return nullptr;
  std::unique_ptr<SchedProbe> probe;
  try {
    probe = SchedProbe::Start({runq, offcpu, EffectiveSchedHook(config)});
  } catch (const ProbeError& e) {
    if ((runq.enabled && runq.required) || (offcpu.enabled && offcpu.required)) throw;
    spdlog::error("{}; continuing without runqueue_latency and offcpu (not required)", e.what());
  }
  const std::string hook = probe ? std::string(probe->hook()) : "";
  if (runq.enabled) statuses.push_back({"runqueue_latency", probe != nullptr, hook});
  if (offcpu.enabled) statuses.push_back({"offcpu", probe != nullptr, hook});
  return probe;
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
// the thread half-dropped, so it is fatal.
void DropPrivilegesAfterAttach(const Config& config, bool have_resolver) {
  const PrivilegesConfig& privileges = config.privileges;
  if (!privileges.drop) {
    spdlog::warn("privileges.drop is false: kpulse keeps every capability it started with");
    return;
  }
  PrivilegeNeeds needs;
  needs.cgroup_file_handles = have_resolver && privileges.cgroup_file_handles;
  needs.reload_attach = false;  // SIGHUP reload is not implemented: a restart applies changes
  needs.symbolize_user_stacks =
      config.offcpu.enabled && config.offcpu.stacks.enabled && config.offcpu.stacks.user;
  needs.user = privileges.user;
  auto dropped = DropPrivileges(PlanPrivileges(needs));
  if (!dropped) throw std::runtime_error("dropping privileges failed: " + dropped.error().message);
  LogDroppedPrivileges(*dropped);
}

}  // namespace

int RunDaemon(const Config& config, const WebConfig& web) {
  SignalFd signals;
  SystemdNotifier systemd;
  RouteLibbpfLogToSpdlog();
  spdlog::info("kpulse {} starting with {}", kVersion, config.source);

  const std::shared_ptr<CgroupResolver> resolver = MakeCgroupResolver();
  const auto labeler = MakeCgroupLabeler(resolver, config.cgroups);
  const SeriesPolicy series = MakeSeriesPolicy(config.series);
  auto sweeper = std::make_shared<CgroupSweeper>(resolver);
  MetricsEndpoint metrics;
  std::vector<ProbeStatus> statuses;

  const UniqueFd bpf_stats = HoldBpfStats(config.bpf_stats);
  std::vector<const bpf_object*> objects;
  auto retrans = StartProbe<RetransProbe>("tcp_retransmit", config.tcp_retransmit, statuses);
  if (retrans) {
    metrics.Add(
        std::make_shared<RetransCollector>(*retrans, labeler, config.tcp_retransmit, series));
    sweeper->Add("retrans_cgroups", [&retrans](const CgroupSweeper::Gone& gone) {
      return retrans->SweepCgroups(gone).map([](uint32_t n) { return uint64_t{n}; });
    });
    objects.push_back(retrans->object());
  }
  auto sched = StartSchedProbe(config, statuses);
  std::unique_ptr<OffcpuStacksEndpoint> offcpu_stacks;
  if (sched) {
    if (config.runqueue_latency.enabled) {
      metrics.Add(
          std::make_shared<RunqueueCollector>(*sched, labeler, config.runqueue_latency, series));
    }
    if (config.offcpu.enabled) {
      metrics.Add(std::make_shared<OffcpuCollector>(*sched, labeler, series));
      offcpu_stacks =
          std::make_unique<OffcpuStacksEndpoint>(*sched, config.offcpu.stacks.enabled, labeler);
    }
    sweeper->Add("cgroup_slots", [&sched](const CgroupSweeper::Gone& gone) {
      return sched->SweepSlots(gone).map([](const SlotSweep& s) { return uint64_t{s.recycled}; });
    });
    sweeper->Add("offcpu_stacks", [&sched](const CgroupSweeper::Gone& gone) {
      return sched->SweepStacks(gone).map([](uint32_t n) { return uint64_t{n}; });
    });
    objects.push_back(sched->object());
  }
  metrics.Add(std::make_shared<BpfProgramCollector>(std::move(objects)));
  metrics.Add(std::make_shared<SelfCollector>(statuses));
  metrics.Add(sweeper);
  DropPrivilegesAfterAttach(config, resolver != nullptr);

  HttpServer::Options options;
  options.listen = config.http.listen_addresses;
  options.connection_timeout_seconds = config.http.connection_timeout_seconds;
  options.max_connections = config.http.max_connections;
  options.web = web;
  HttpServer server(std::move(options));
  server.Route("/metrics",
               [&metrics](const HttpRequest& request) { return metrics.Render(request); });
  if (offcpu_stacks) {
    // Windows hold a thread each for up to 60 s: a few at a time (503 beyond), never the scrape's.
    server.Route("/debug/offcpu", [&offcpu_stacks](const HttpRequest& request) {
      return offcpu_stacks->Render(request);
    }, RouteOptions{kMaxConcurrentDebugWindows});
  }
  server.Route("/healthz", [](const HttpRequest&) {
    return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
  });
  server.Route("/", [](const HttpRequest&) {
    return HttpResponse{200, "text/html; charset=utf-8",
                        "<html><head><title>kpulse</title></head><body><h1>kpulse</h1>"
                        "<p><a href=\"/metrics\">Metrics</a></p></body></html>\n"};
  });
  server.Start();

  // Name the ports actually bound (a configured port 0 means "any free port").
  std::string listening;
  const std::vector<uint16_t> ports = server.BoundPorts();
  for (size_t i = 0; i < config.http.listen_addresses.size() && i < ports.size(); ++i) {
    const std::string& text = config.http.listen_addresses[i].text;
    listening += (listening.empty() ? "" : ", ") + text.substr(0, text.rfind(':') + 1) +
                 std::to_string(ports[i]);
  }
  size_t up = 0;
  for (const auto& status : statuses) up += status.up ? 1 : 0;
  const std::string status_line = "serving /metrics on " + listening + "; " + std::to_string(up) +
                                  "/" + std::to_string(statuses.size()) + " probes attached";
  spdlog::info("{}", status_line);
  systemd.Ready(status_line);

  // The loop wakes for signals, the watchdog (at half its interval) and the cgroup sweep.
  const auto watchdog = systemd.watchdog_interval();
  const auto sweep_interval = std::chrono::seconds(config.cgroups.sweep_interval_seconds);
  auto next_sweep = std::chrono::steady_clock::now() + sweep_interval;
  int wait_ms = static_cast<int>(sweep_interval.count() * 1000);
  if (watchdog) wait_ms = std::min(wait_ms, static_cast<int>(watchdog->count() / 2000));
  for (;;) {
    const int signal = signals.Wait(wait_ms);
    if (watchdog) systemd.WatchdogPing();
    if (std::chrono::steady_clock::now() >= next_sweep) {
      sweeper->SweepNow();
      next_sweep = std::chrono::steady_clock::now() + sweep_interval;
    }
    if (signal == SIGINT || signal == SIGTERM) {
      spdlog::info("received {}, stopping", strsignal(signal));
      break;
    }
    if (signal == SIGHUP) {
      spdlog::warn(
          "SIGHUP: configuration reload is not supported yet; restart kpulse to apply "
          "changes");
    }
  }
  systemd.Stopping();
  // Running /debug/offcpu windows see the stop and return; in-flight scrapes finish.
  if (!server.Stop(std::chrono::milliseconds(1500))) {
    spdlog::warn("stopping: a handler did not finish within 1.5 s and was answered 503");
  }
  return 0;  // server, collectors and probes are destroyed in reverse order: links detach
}

}  // namespace kpulse
