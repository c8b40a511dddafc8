#include "collect/self_collector.h"

#include <bpf/libbpf.h>
#include <sys/utsname.h>

#include "collect/family_builder.h"
#include "version.h"

namespace kpulse {

SelfCollector::SelfCollector(std::vector<ProbeStatus> probes,
                             std::chrono::system_clock::time_point loaded)
    : probes_(std::move(probes)), last_success_(loaded) {}

void SelfCollector::SetProbes(std::vector<ProbeStatus> probes) {
  const std::lock_guard lock(mu_);
  probes_ = std::move(probes);
}

void SelfCollector::RecordReload(bool success, std::chrono::system_clock::time_point when) {
  const std::lock_guard lock(mu_);
  last_reload_successful_ = success;
  if (success) last_success_ = when;
}

std::vector<prometheus::MetricFamily> SelfCollector::Collect() const {
  const std::lock_guard lock(mu_);
  utsname uts{};
  uname(&uts);
  auto build = MakeFamily("kpulse_build_info", "kpulse build and runtime versions; always 1.",
                          prometheus::MetricType::Gauge);
  AddSample(
      build,
      {{"version", kVersion}, {"libbpf_version", libbpf_version_string()}, {"kernel", uts.release}},
      1);

  auto up = MakeFamily("kpulse_probe_up", "1 if the probe is loaded and attached, 0 if it failed.",
                       prometheus::MetricType::Gauge);
  auto info =
      MakeFamily("kpulse_probe_info", "The hook variant each attached probe runs; always 1.",
                 prometheus::MetricType::Gauge);
  for (const ProbeStatus& status : probes_) {
    AddSample(up, {{"probe", status.probe}}, status.up ? 1 : 0);
    if (status.up) AddSample(info, {{"probe", status.probe}, {"hook", status.hook}}, 1);
  }
  auto reload_ok = MakeFamily("kpulse_config_last_reload_successful",
                              "1 if the last configuration reload (SIGHUP) was applied, 0 if it "
                              "was refused and the previous configuration kept.",
                              prometheus::MetricType::Gauge);
  AddSample(reload_ok, {}, last_reload_successful_ ? 1 : 0);
  auto reload_time = MakeFamily("kpulse_config_last_reload_success_timestamp_seconds",
                                "When the configuration in use was loaded (start-up or the last "
                                "applied reload), in seconds since the epoch.",
                                prometheus::MetricType::Gauge);
  AddSample(reload_time, {},
            std::chrono::duration<double>(last_success_.time_since_epoch()).count());
  return {std::move(build), std::move(up), std::move(info), std::move(reload_ok),
          std::move(reload_time)};
}

}  // namespace kpulse
