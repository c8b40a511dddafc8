#include "service/probe_manager.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "bpf/bpf_skeleton.h"
#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"
#include "collect/bpf_program_collector.h"
#include "collect/offcpu_collector.h"
#include "collect/retrans_collector.h"
#include "collect/runqueue_collector.h"
#include "debug/offcpu_stacks.h"
#include "http/metrics_handler.h"
#include "service/cgroup_sweeper.h"
#include "symbolize/kernel_symbols.h"

namespace kpulse {

// Members in order of construction: the probe first, so that what reads its maps dies first.
struct ProbeManager::RetransUnit {
  std::unique_ptr<RetransProbe> probe;
  std::shared_ptr<RetransCollector> collector;
  std::shared_ptr<BpfProgramCollector> programs;
};

struct ProbeManager::SchedUnit {
  std::unique_ptr<SchedProbe> probe;
  std::shared_ptr<RunqueueCollector> runqueue;   // Null when runqueue_latency is off.
  std::shared_ptr<OffcpuCollector> offcpu;       // Null when offcpu is off.
  std::unique_ptr<OffcpuStacksEndpoint> stacks;  // Null when offcpu is off.
  std::shared_ptr<BpfProgramCollector> programs;
};

namespace {

constexpr const char* kRetransSweep = "retrans_cgroups";
constexpr const char* kSlotSweep = "cgroup_slots";
constexpr const char* kStackSweep = "offcpu_stacks";

bool SchedEnabled(const Config& config) {
  return config.runqueue_latency.enabled || config.offcpu.enabled;
}

SchedProbeOptions SchedKernelSide(const Config& config) {
  return {config.runqueue_latency, config.offcpu, EffectiveSchedHook(config)};
}

bool RetransReloads(const Config& from, const Config& to) {
  return to.tcp_retransmit.enabled &&
         (!from.tcp_retransmit.enabled ||
          static_cast<const RetransProbeOptions&>(from.tcp_retransmit) !=
              static_cast<const RetransProbeOptions&>(to.tcp_retransmit));
}

bool SchedReloads(const Config& from, const Config& to) {
  return SchedEnabled(to) && (!SchedEnabled(from) || SchedKernelSide(from) != SchedKernelSide(to));
}

}  // namespace

ProbeManager::ProbeManager(MetricsEndpoint& metrics, CgroupSweeper& sweeper, SelfCollector& self)
    : metrics_(metrics), sweeper_(sweeper), self_(self) {}

ProbeManager::~ProbeManager() {
  metrics_.Atomically([this](MetricsEndpoint::Changes& changes) {
    const std::lock_guard lock(mutex_);
    if (retrans_) Unregister(*retrans_, changes);
    if (sched_) Unregister(*sched_, changes);
  });
}

void ProbeManager::Start(const Config& config, const ExportSettings& exports) {
  if (config.offcpu.enabled && config.offcpu.stacks.enabled) {
    kernel_symbols_ = KernelSymbols::Load();  // while CAP_SYSLOG is held
  }
  std::shared_ptr<RetransUnit> retrans;
  if (config.tcp_retransmit.enabled) {
    try {
      retrans = StartRetrans(config, exports);
    } catch (const ProbeError& e) {
      if (config.tcp_retransmit.required) throw;
      spdlog::error("{}; continuing without it (probes.tcp_retransmit.required is false)",
                    e.what());
    }
  }
  std::shared_ptr<SchedUnit> sched;
  if (SchedEnabled(config)) {
    try {
      sched = StartSched(config, exports);
    } catch (const ProbeError& e) {
      const RunqueueConfig& runq = config.runqueue_latency;
      const OffcpuConfig& offcpu = config.offcpu;
      if ((runq.enabled && runq.required) || (offcpu.enabled && offcpu.required)) throw;
      spdlog::error("{}; continuing without runqueue_latency and offcpu (not required)", e.what());
    }
  }
  metrics_.Atomically([&](MetricsEndpoint::Changes& changes) {
    const std::lock_guard lock(mutex_);
    config_ = config;
    retrans_ = std::move(retrans);
    if (retrans_) Register(*retrans_, changes);
    sched_ = std::move(sched);
    if (sched_) Register(*sched_, changes);
  });
  self_.SetProbes(Statuses());
}

std::vector<std::string> ProbeManager::ProbesToLoad(const Config& config) const {
  std::vector<std::string> load;
  if (RetransReloads(config_, config)) load.emplace_back("tcp_retransmit");
  if (SchedReloads(config_, config)) load.emplace_back("sched");
  return load;
}

std::string ProbeManager::NeedsRestart(const Config& config) const {
  const bool stacks_before = config_.offcpu.enabled && config_.offcpu.stacks.enabled;
  const bool stacks_after = config.offcpu.enabled && config.offcpu.stacks.enabled;
  if (stacks_after && !stacks_before && kernel_symbols_ == nullptr) {
    return "probes.offcpu.stacks.enabled: turning stacks on needs a restart (kernel symbols "
           "are read at start-up, while CAP_SYSLOG is held)";
  }
  return "";
}

tl::expected<void, std::string> ProbeManager::Apply(const Config& config,
                                                    const ExportSettings& exports) {
  // Only this thread writes the state: reading it here needs no lock.
  // Load first: if anything fails, the running probes are untouched.
  std::shared_ptr<RetransUnit> retrans = config.tcp_retransmit.enabled ? retrans_ : nullptr;
  if (RetransReloads(config_, config)) {
    try {
      retrans = StartRetrans(config, exports);
    } catch (const ProbeError& e) {
      return tl::unexpected(std::string("probes.tcp_retransmit: ") + e.what());
    }
  }
  std::shared_ptr<SchedUnit> sched = SchedEnabled(config) ? sched_ : nullptr;
  if (SchedReloads(config_, config)) {
    try {
      sched = StartSched(config, exports);
    } catch (const ProbeError& e) {
      return tl::unexpected(std::string("probes.runqueue_latency/offcpu: ") + e.what());
    }
  }
  // The replaced units die when this returns, outside the endpoint's lock (a /debug/offcpu
  // window may hold the scheduler's until it ends).
  const std::shared_ptr<RetransUnit> old_retrans = retrans_;
  const std::shared_ptr<SchedUnit> old_sched = sched_;
  metrics_.Atomically([&](MetricsEndpoint::Changes& changes) {
    const std::lock_guard lock(mutex_);
    MoveTo(retrans_, retrans, config, exports, changes);
    MoveTo(sched_, sched, config, exports, changes);
    config_ = config;
  });
  self_.SetProbes(Statuses());
  return {};
}

template <typename Unit>
void ProbeManager::MoveTo(std::shared_ptr<Unit>& current, const std::shared_ptr<Unit>& next,
                          const Config& config, const ExportSettings& exports,
                          MetricsEndpoint::Changes& changes) {
  if (next == current) {
    if (current) Reconfigure(*current, config, exports);
    return;
  }
  if (current) Unregister(*current, changes);
  if (next) Register(*next, changes);
  current = next;
}

std::vector<ProbeStatus> ProbeManager::Statuses() const {
  const std::lock_guard lock(mutex_);
  return StatusesLocked();
}

std::vector<ProbeStatus> ProbeManager::StatusesLocked() const {
  std::vector<ProbeStatus> statuses;
  if (config_.tcp_retransmit.enabled) {
    statuses.push_back({"tcp_retransmit", retrans_ != nullptr,
                        retrans_ ? std::string(retrans_->probe->hook()) : ""});
  }
  const std::string sched_hook = sched_ ? std::string(sched_->probe->hook()) : "";
  if (config_.runqueue_latency.enabled) {
    statuses.push_back({"runqueue_latency", sched_ != nullptr, sched_hook});
  }
  if (config_.offcpu.enabled) statuses.push_back({"offcpu", sched_ != nullptr, sched_hook});
  return statuses;
}

std::string ProbeManager::HealthProblems() const {
  const std::lock_guard lock(mutex_);
  std::string problems;
  for (const ProbeStatus& status : StatusesLocked()) {
    if (!status.up) problems += "probe " + status.probe + " is not attached\n";
  }
  if (retrans_ && !retrans_->collector->LastReadOk()) {
    problems += "the last read of tcp_retransmit's maps failed\n";
  }
  if (sched_ && sched_->runqueue && !sched_->runqueue->LastReadOk()) {
    problems += "the last read of runqueue_latency's maps failed\n";
  }
  if (sched_ && sched_->offcpu && !sched_->offcpu->LastReadOk()) {
    problems += "the last read of offcpu's maps failed\n";
  }
  return problems;
}

HttpResponse ProbeManager::ServeOffcpuStacks(const HttpRequest& request) const {
  std::shared_ptr<SchedUnit> sched;
  {
    const std::lock_guard lock(mutex_);
    sched = sched_;
  }
  if (!sched || !sched->stacks) {
    return HttpResponse{404, "text/plain; charset=utf-8", "the offcpu probe is not running\n"};
  }
  return sched->stacks->Render(request);
}

std::shared_ptr<ProbeManager::RetransUnit> ProbeManager::StartRetrans(
    const Config& config, const ExportSettings& exports) {
  auto unit = std::make_shared<RetransUnit>();
  unit->probe = RetransProbe::Start(config.tcp_retransmit);
  unit->collector = std::make_shared<RetransCollector>(*unit->probe, exports.labeler,
                                                       config.tcp_retransmit, exports.series);
  unit->programs =
      std::make_shared<BpfProgramCollector>(std::vector<const bpf_object*>{unit->probe->object()});
  return unit;
}

std::shared_ptr<ProbeManager::SchedUnit> ProbeManager::StartSched(const Config& config,
                                                                  const ExportSettings& exports) {
  auto unit = std::make_shared<SchedUnit>();
  unit->probe = SchedProbe::Start(SchedKernelSide(config));
  if (config.runqueue_latency.enabled) {
    unit->runqueue = std::make_shared<RunqueueCollector>(*unit->probe, exports.labeler,
                                                         config.runqueue_latency, exports.series);
  }
  if (config.offcpu.enabled) {
    unit->offcpu = std::make_shared<OffcpuCollector>(*unit->probe, exports.labeler, exports.series);
    unit->stacks = std::make_unique<OffcpuStacksEndpoint>(
        *unit->probe, config.offcpu.stacks.enabled, kernel_symbols_, exports.labeler);
  }
  unit->programs =
      std::make_shared<BpfProgramCollector>(std::vector<const bpf_object*>{unit->probe->object()});
  return unit;
}

void ProbeManager::Register(RetransUnit& unit, MetricsEndpoint::Changes& changes) {
  changes.Add(unit.collector);
  changes.Add(unit.programs);
  RetransProbe* probe = unit.probe.get();
  sweeper_.Add(kRetransSweep, [probe](const CgroupSweeper::Gone& gone) {
    return probe->SweepCgroups(gone).map([](uint32_t n) { return uint64_t{n}; });
  });
}

void ProbeManager::Register(SchedUnit& unit, MetricsEndpoint::Changes& changes) {
  if (unit.runqueue) changes.Add(unit.runqueue);
  if (unit.offcpu) changes.Add(unit.offcpu);
  changes.Add(unit.programs);
  SchedProbe* probe = unit.probe.get();
  sweeper_.Add(kSlotSweep, [probe](const CgroupSweeper::Gone& gone) {
    return probe->SweepSlots(gone).map([](const SlotSweep& s) { return uint64_t{s.recycled}; });
  });
  sweeper_.Add(kStackSweep, [probe](const CgroupSweeper::Gone& gone) {
    return probe->SweepStacks(gone).map([](uint32_t n) { return uint64_t{n}; });
  });
}

void ProbeManager::Unregister(RetransUnit& unit, MetricsEndpoint::Changes& changes) {
  changes.Remove(unit.collector.get());
  changes.Remove(unit.programs.get());
  sweeper_.Remove(kRetransSweep);
}

void ProbeManager::Unregister(SchedUnit& unit, MetricsEndpoint::Changes& changes) {
  changes.Remove(unit.runqueue.get());
  changes.Remove(unit.offcpu.get());
  changes.Remove(unit.programs.get());
  sweeper_.Remove(kSlotSweep);
  sweeper_.Remove(kStackSweep);
}

void ProbeManager::Reconfigure(RetransUnit& unit, const Config& config,
                               const ExportSettings& exports) {
  unit.collector->Reconfigure(exports.labeler, config.tcp_retransmit, exports.series);
}

void ProbeManager::Reconfigure(SchedUnit& unit, const Config& /*config*/,
                               const ExportSettings& exports) {
  if (unit.runqueue) unit.runqueue->Reconfigure(exports.labeler, exports.series);
  if (unit.offcpu) unit.offcpu->Reconfigure(exports.labeler, exports.series);
  if (unit.stacks) unit.stacks->SetLabeler(exports.labeler);
}

}  // namespace kpulse
