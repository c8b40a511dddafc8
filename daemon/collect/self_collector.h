#pragma once

#include <prometheus/collectable.h>

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace kpulse {

/// How one configured probe ended up (at start-up, then after each reload).
struct ProbeStatus {
  std::string probe;  // "tcp_retransmit"
  bool up = false;    // loaded and attached
  std::string hook;   // variant attached ("tp_btf", "tracepoint"); empty when down
};

/// kpulse's own state: build info, which probes run with which hook, and how the last
/// configuration reload went. Thread-safe.
class SelfCollector : public prometheus::Collectable {
 public:
  /// `loaded`: when the configuration in use at start-up was read (the first "successful
  /// reload", as Prometheus itself reports it).
  explicit SelfCollector(
      std::vector<ProbeStatus> probes = {},
      std::chrono::system_clock::time_point loaded = std::chrono::system_clock::now());
  std::vector<prometheus::MetricFamily> Collect() const override;

  void SetProbes(std::vector<ProbeStatus> probes);
  /// A reload ended: applied (`success`) or refused, the old configuration kept.
  void RecordReload(bool success, std::chrono::system_clock::time_point when);

 private:
  mutable std::mutex mu_;
  std::vector<ProbeStatus> probes_;                     // Guarded by mu_.
  bool last_reload_successful_ = true;                  // Guarded by mu_.
  std::chrono::system_clock::time_point last_success_;  // Guarded by mu_.
};

}  // namespace kpulse
