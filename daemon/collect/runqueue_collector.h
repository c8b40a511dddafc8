#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>

#include <memory>
#include <mutex>

#include "bpf/probe_options.h"
#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "collect/cgroup_series.h"
#include "collect/read_errors.h"

namespace kpulse {

/// Upper bound (`le`, seconds) of histogram slot `slot`: slot i holds [2^(i+10), 2^(i+11)) ns,
/// so its bound is 2^(i+11) ns (2.048 us for slot 0). The last slot is open-ended and has no
/// finite bound (it is in +Inf).
double SlotUpperBoundSeconds(int slot);

/// A kernel log2 histogram as a Prometheus histogram: cumulative buckets for every finite slot,
/// exact `_sum` (from the kernel's ns sum) and `_count`.
prometheus::ClientMetric::Histogram ToPrometheusHistogram(const sched_hist& hist);

/// Run-queue latency families at scrape time. Thread-safe, never throws, never resets the
/// kernel maps. Does not own `source`, which must outlive the collector.
class RunqueueCollector : public prometheus::Collectable {
 public:
  RunqueueCollector(const RunqueueSource& source, std::shared_ptr<const CgroupLabeler> labeler,
                    RunqueueProbeOptions kernel, SeriesPolicy series = {});
  std::vector<prometheus::MetricFamily> Collect() const override;
  /// Whether the last Collect() read the probe's maps (true before the first).
  bool LastReadOk() const { return !read_errors_.LastFailed(); }

  /// A reload's export-side settings (labels, series cap and TTL); the next Collect() uses them.
  void Reconfigure(std::shared_ptr<const CgroupLabeler> labeler, SeriesPolicy series);

 private:
  const RunqueueSource& source_;
  std::shared_ptr<const CgroupLabeler> labeler_;  // Guarded by mu_.
  RunqueueProbeOptions config_;                   // per_cpu: the probe's histograms are per CPU
  mutable std::mutex mu_;  // a snapshot and its aggregation are one step (retired records)
  mutable CgroupSeries<sched_hist> series_;
  ReadErrors read_errors_{"runqueue_latency", "kpulse_runqueue_read_errors_total"};
};

}  // namespace kpulse
