#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bpf/retrans_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "collect/cgroup_series.h"
#include "collect/read_errors.h"
#include "collect/series_limiter.h"
#include "config/config.h"

namespace kpulse {

/// Label values for one flow key. v4-mapped IPv6 endpoints (::ffff:a.b.c.d) are shown as IPv4,
/// so one upstream has one series whichever socket family reached it.
struct FlowLabelValues {
  std::string family;  // "ipv4" | "ipv6"
  std::string laddr, lport, raddr, rport;
};
FlowLabelValues FormatFlow(const retrans_flow_key& key);

/// The flow as exported under `config`: v4-mapped flows as IPv4, and what is not labelled
/// (local end with flow_labels remote, network namespace without netns_label) zeroed, so that
/// flows exported with the same labels compare equal.
retrans_flow_key ExportedFlow(const retrans_flow_key& key, const RetransConfig& config);

std::string_view RetransKindName(uint32_t kind);  // "syn" | "synack" | "data" | "unknown"

/// Turns a RetransSource snapshot into Prometheus families at scrape time (Collect() runs on
/// the HTTP threads: it is thread-safe and never throws). Kernel counters are never reset.
/// Does not own `source`; the source must outlive the collector.
class RetransCollector : public prometheus::Collectable {
 public:
  RetransCollector(const RetransSource& source, std::shared_ptr<const CgroupLabeler> labeler,
                   RetransConfig config, SeriesPolicy series = {});
  std::vector<prometheus::MetricFamily> Collect() const override;
  /// Whether the last Collect() read the probe's maps (true before the first).
  bool LastReadOk() const { return !read_errors_.LastFailed(); }

  /// A reload's export-side settings: labels, series cap and TTL, netns_label (`config`'s
  /// kernel side must be the probe's, unchanged). The next Collect() uses them. A changed
  /// netns_label gives every flow a new label set: the flow series start over under it.
  void Reconfigure(std::shared_ptr<const CgroupLabeler> labeler, const RetransConfig& config,
                   SeriesPolicy series);

 private:
  struct FlowLess {
    bool operator()(const retrans_flow_key& a, const retrans_flow_key& b) const {
      return std::memcmp(&a, &b, sizeof(a)) < 0;
    }
  };
  using KindCounts = std::array<uint64_t, RETRANS_KIND_MAX>;

  void AddCgroupFamilies(const RetransSnapshot& snapshot,
                         std::vector<prometheus::MetricFamily>& families) const;  // Requires mu_.
  void AddFlowFamilies(const RetransSnapshot& snapshot,
                       std::vector<prometheus::MetricFamily>& families) const;  // Requires mu_.

  const RetransSource& source_;
  std::shared_ptr<const CgroupLabeler> labeler_;  // Guarded by mu_.
  RetransConfig config_;                          // Guarded by mu_ (export side).
  mutable std::mutex mu_;  // a snapshot and its aggregation are one step (retired entries)
  mutable CgroupSeries<uint64_t> cgroup_series_;                    // Guarded by mu_.
  mutable SeriesLimiter<retrans_flow_key, FlowLess> flow_limiter_;  // Guarded by mu_.
  // Folded flows' last counts, and those of folded flows since evicted: <other> keeps them.
  mutable std::map<retrans_flow_key, KindCounts, FlowLess> folded_flows_;  // Guarded by mu_.
  mutable KindCounts departed_folded_{};                                   // Guarded by mu_.
  // Evictions are derived (flows created - flows present); reads race with inserts, so the
  // exported counter only ever rises.
  mutable uint64_t evicted_high_water_ = 0;  // Guarded by mu_.
  ReadErrors read_errors_{"tcp_retransmit", "kpulse_tcp_retransmit_read_errors_total"};
};

}  // namespace kpulse
