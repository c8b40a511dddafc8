#include "collect/self_collector.h"

#include <bpf/libbpf.h>
#include <sys/utsname.h>

#include "collect/family_builder.h"
#include "version.h"

namespace kpulse {

SelfCollector::SelfCollector(std::vector<ProbeStatus> probes) : probes_(std::move(probes)) {}

std::vector<prometheus::MetricFamily> SelfCollector::Collect() const {
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
  return {std::move(build), std::move(up), std::move(info)};
}

}  // namespace kpulse
