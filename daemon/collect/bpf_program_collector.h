#pragma once

#include <prometheus/collectable.h>

#include <vector>

struct bpf_object;

namespace kpulse {

/// Per-program kernel statistics of kpulse's own BPF programs (bpf_prog_info run_cnt and
/// run_time_ns), so users see kpulse's cost in production. The kernel fills them only while BPF
/// stats are enabled (kernel.bpf_stats_enabled=1, or an fd from BPF_ENABLE_STATS: the daemon's
/// `bpf_stats: true`). Does not own the objects; they must outlive the collector.
class BpfProgramCollector : public prometheus::Collectable {
 public:
  explicit BpfProgramCollector(std::vector<const bpf_object*> objects);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::vector<const bpf_object*> objects_;
};

}  // namespace kpulse
