#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <tl/expected.hpp>
#include <vector>

#include "cgroup/cgroup_labeler.h"
#include "collect/self_collector.h"
#include "collect/series_limiter.h"
#include "config/config.h"
#include "http/http_server.h"
#include "http/metrics_handler.h"

namespace kpulse {

class CgroupSweeper;
class KernelSymbols;

/// What every probe's collectors share and a scrape applies: cgroup labels (cgroups.depth,
/// allow, deny) and the series cap and idle TTL.
struct ExportSettings {
  std::shared_ptr<const CgroupLabeler> labeler;
  SeriesPolicy series;
};

/// Owns each probe's lifecycle: its BPF object, its collectors (registered with the metrics
/// endpoint), its cgroup sweeps and, for the scheduler object, /debug/offcpu. Start() attaches
/// what a configuration enables; Apply() moves to another one:
///   - a probe whose kernel side (bpf/probe_options.h, and `enabled`) is unchanged keeps its
///     maps, counters and collectors; only their export side changes;
///   - a probe switched on, or with changed kernel-side settings, is loaded anew (its counters
///     start over); one switched off is detached;
///   - all or nothing: if a probe fails to load, nothing changes and the error says which.
/// The export side of every collector changes in one MetricsEndpoint::Atomically() step, so a
/// scrape sees the old configuration or the new one, never a mix.
///
/// Start() and Apply() run on the main thread; the other members are thread-safe.
/// The endpoint and sweeper must outlive the manager; its destructor unregisters everything.
class ProbeManager {
 public:
  ProbeManager(MetricsEndpoint& metrics, CgroupSweeper& sweeper, SelfCollector& self);
  ~ProbeManager();
  ProbeManager(const ProbeManager&) = delete;
  ProbeManager& operator=(const ProbeManager&) = delete;

  /// Attaches every enabled probe. A probe that fails is logged and left out, unless it is
  /// `required`: then the ProbeError propagates. Loads kernel symbols when stacks are on (needs
  /// CAP_SYSLOG, held only at start-up).
  void Start(const Config& config, const ExportSettings& exports);

  /// Names of the probes Apply(config) would load ("tcp_retransmit", "sched"): switched on, or
  /// with changed kernel-side settings. Loading needs CAP_BPF and CAP_PERFMON.
  std::vector<std::string> ProbesToLoad(const Config& config) const;

  /// Why `config` cannot be applied without a restart (empty: it can): off-CPU stacks turned on
  /// without the kernel symbols read at start-up.
  std::string NeedsRestart(const Config& config) const;

  /// Moves to `config` (validated, NeedsRestart() empty). On error nothing changed; the error
  /// is one line naming the probe.
  tl::expected<void, std::string> Apply(const Config& config, const ExportSettings& exports);

  std::vector<ProbeStatus> Statuses() const;

  /// For /healthz, one line each: configured probes that are not attached, and probes whose
  /// last scrape could not read their maps. Empty when healthy. Thread-safe.
  std::string HealthProblems() const;

  /// GET /debug/offcpu: the current scheduler object's folded stacks; 404 while off-CPU is off.
  /// Thread-safe; a window in flight keeps its probe alive through a reload.
  HttpResponse ServeOffcpuStacks(const HttpRequest& request) const;

 private:
  struct RetransUnit;
  struct SchedUnit;

  std::vector<ProbeStatus> StatusesLocked() const;  // Requires mutex_.
  std::shared_ptr<RetransUnit> StartRetrans(const Config& config, const ExportSettings& exports);
  std::shared_ptr<SchedUnit> StartSched(const Config& config, const ExportSettings& exports);
  // Registers / unregisters a unit's collectors (within a MetricsEndpoint::Atomically() step)
  // and its cgroup sweeps.
  void Register(RetransUnit& unit, MetricsEndpoint::Changes& changes);
  void Register(SchedUnit& unit, MetricsEndpoint::Changes& changes);
  void Unregister(RetransUnit& unit, MetricsEndpoint::Changes& changes);
  void Unregister(SchedUnit& unit, MetricsEndpoint::Changes& changes);
  void Reconfigure(RetransUnit& unit, const Config& config, const ExportSettings& exports);
  // `current` becomes `next`: the same unit is reconfigured, another one replaces it.
  template <typename Unit>
  void MoveTo(std::shared_ptr<Unit>& current, const std::shared_ptr<Unit>& next,
              const Config& config, const ExportSettings& exports,
              MetricsEndpoint::Changes& changes);
  void Reconfigure(SchedUnit& unit, const Config& config, const ExportSettings& exports);

  MetricsEndpoint& metrics_;
  CgroupSweeper& sweeper_;
  SelfCollector& self_;
  std::shared_ptr<const KernelSymbols> kernel_symbols_;  // Read at Start() when stacks are on.
  // Guards what the HTTP threads read (/debug/offcpu, /healthz). Written only on the main
  // thread, which may read them without it.
  mutable std::mutex mutex_;
  Config config_;  // The configuration the probes run with.
  std::shared_ptr<RetransUnit> retrans_;
  std::shared_ptr<SchedUnit> sched_;
};

}  // namespace kpulse
