#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "bpf/retrans_probe.h"
#include "config/config.h"

namespace kpulse {

/// Resolves a cgroup v2 id to its path below the cgroup2 root; nullopt when the cgroup is gone.
using CgroupPathLookup = std::function<std::optional<std::string>(uint64_t cgroup_id)>;

/// Label values for one flow key. v4-mapped IPv6 endpoints (::ffff:a.b.c.d) are shown as IPv4,
/// so one upstream has one series whichever socket family reached it.
struct FlowLabelValues {
  std::string family;  // "ipv4" | "ipv6"
  std::string laddr, lport, raddr, rport;
};
FlowLabelValues FormatFlow(const retrans_flow_key& key);

std::string_view RetransKindName(uint32_t kind);  // "syn" | "synack" | "data" | "unknown"

/// Label used for cgroups that no longer exist (their series fold into one), and for the
/// segments the cgroup map could not hold.
inline constexpr const char* kDeletedCgroupLabel = "<deleted>";
inline constexpr const char* kOverflowCgroupLabel = "<other>";

/// Turns a RetransSource snapshot into Prometheus families at scrape time (Collect() runs on
/// the HTTP threads: it is thread-safe and never throws). Kernel counters are never reset.
/// Does not own `source`; the source must outlive the collector.
class RetransCollector : public prometheus::Collectable {
 public:
  RetransCollector(const RetransSource& source, CgroupPathLookup cgroup_path,
                   RetransConfig config);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const RetransSource& source_;
  CgroupPathLookup cgroup_path_;
  RetransConfig config_;
  // Evictions are derived (flows created - flows present); reads race with inserts, so keep the
  // exported counter monotonic.
  mutable std::atomic<uint64_t> evicted_high_water_{0};
  mutable std::atomic<uint64_t> read_errors_{0};
};

}  // namespace kpulse
