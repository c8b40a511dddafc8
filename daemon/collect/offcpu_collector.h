#pragma once

#include <prometheus/collectable.h>

#include <atomic>
#include <string_view>

#include "bpf/sched_probe.h"
#include "collect/cgroup_label.h"
#include "collect/read_errors.h"
#include "config/config.h"

namespace kpulse {

/// "sleep" | "disk" | "idle" | "other" | "unknown".
std::string_view OffcpuStateName(uint32_t state);

/// Off-CPU (blocked) time families at scrape time. Thread-safe, never throws, never resets the
/// kernel maps. Does not own `source`, which must outlive the collector.
class OffcpuCollector : public prometheus::Collectable {
 public:
  OffcpuCollector(const OffcpuSource& source, CgroupPathLookup cgroup_path);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const OffcpuSource& source_;
  CgroupPathLookup cgroup_path_;
  ReadErrors read_errors_{"offcpu", "kpulse_offcpu_read_errors_total"};
};

}  // namespace kpulse
