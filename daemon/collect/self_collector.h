#pragma once

#include <prometheus/collectable.h>

#include <string>
#include <vector>

namespace kpulse {

/// How one configured probe ended up at start-up.
struct ProbeStatus {
  std::string probe;  // "tcp_retransmit"
  bool up = false;    // loaded and attached
  std::string hook;   // variant attached ("tp_btf", "tracepoint"); empty when down
};

/// kpulse's own state: build info and which probes run with which hook. Immutable after
/// construction, so Collect() is trivially thread-safe.
class SelfCollector : public prometheus::Collectable {
 public:
  explicit SelfCollector(std::vector<ProbeStatus> probes);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::vector<ProbeStatus> probes_;
};

}  // namespace kpulse
