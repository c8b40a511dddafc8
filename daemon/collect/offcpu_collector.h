#pragma once

#include <prometheus/collectable.h>

#include <memory>
#include <mutex>
#include <string_view>

#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "collect/cgroup_series.h"
#include "collect/read_errors.h"
#include "config/config.h"

namespace kpulse {

/// "sleep" | "disk" | "idle" | "other" | "unknown".
std::string_view OffcpuStateName(uint32_t state);

/// Off-CPU (blocked) time families at scrape time. Thread-safe, never throws, never resets the
/// kernel maps. Does not own `source`, which must outlive the collector.
class OffcpuCollector : public prometheus::Collectable {
 public:
  OffcpuCollector(const OffcpuSource& source, std::shared_ptr<const CgroupLabeler> labeler,
                  SeriesPolicy series = {});
  std::vector<prometheus::MetricFamily> Collect() const override;
  /// Whether the last Collect() read the probe's maps (true before the first).
  bool LastReadOk() const { return !read_errors_.LastFailed(); }

  /// A reload's export-side settings (labels, series cap and TTL); the next Collect() uses them.
  void Reconfigure(std::shared_ptr<const CgroupLabeler> labeler, SeriesPolicy series);

 private:
  const OffcpuSource& source_;
  std::shared_ptr<const CgroupLabeler> labeler_;  // Guarded by mu_.
  mutable std::mutex mu_;  // a snapshot and its aggregation are one step (retired records)
  mutable CgroupSeries<sched_hist> series_;
  ReadErrors read_errors_{"offcpu", "kpulse_offcpu_read_errors_total"};
};

}  // namespace kpulse
