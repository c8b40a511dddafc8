#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bpf/retrans_probe.h"
#include "collect/cgroup_label.h"
#include "collect/read_errors.h"
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
  RetransCollector(const RetransSource& source, CgroupPathLookup cgroup_path, RetransConfig config);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const RetransSource& source_;
  CgroupPathLookup cgroup_path_;
  RetransConfig config_;
  // Evictions are derived (flows created - flows present); reads race with inserts, so keep the
  // exported counter monotonic.
  mutable std::atomic<uint64_t> evicted_high_water_{0};
  ReadErrors read_errors_{"tcp_retransmit", "kpulse_tcp_retransmit_read_errors_total"};
};

}  // namespace kpulse
