#pragma once

#include <prometheus/collectable.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <tl/expected.hpp>
#include <vector>

namespace kpulse {

class CgroupResolver;

/// Gives the kernel state of removed cgroups back, at intervals (docs/design.md, "Cgroup churn"):
/// every registered sweep (scheduler slots, retransmit cgroup entries, stack aggregates) is run
/// with one "is this cgroup known to be removed?" answer from the resolver, which walks the tree
/// at most once per sweep when it cannot use file handles. Without a resolver nothing is ever
/// known to be removed, and nothing is swept.
///
/// Also the collector of its own self-metrics. Thread-safe.
class CgroupSweeper : public prometheus::Collectable {
 public:
  using Gone = std::function<bool(uint64_t cgroup_id)>;
  /// Removes what belongs to removed cgroups from one map; returns how many entries (or slots).
  using Sweep = std::function<tl::expected<uint64_t, std::string>(const Gone& gone)>;

  explicit CgroupSweeper(std::shared_ptr<CgroupResolver> resolver);
  ~CgroupSweeper() override;

  /// Registers the sweep of the map `map` (the label of its self-metric), replacing one of that
  /// name (a reloaded probe's): the map's self-metrics go on counting.
  void Add(std::string map, Sweep sweep);
  /// Stops sweeping `map` (its probe is detached); once this returns, no sweep of it runs.
  void Remove(const std::string& map);
  /// Runs every sweep once. A failing sweep is logged and counted; the others still run.
  void SweepNow();

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Registered {
    std::string map;
    Sweep sweep;
    uint64_t removed = 0;
    uint64_t errors = 0;
  };

  std::shared_ptr<CgroupResolver> resolver_;
  mutable std::mutex mu_;
  std::vector<Registered> sweeps_;  // Guarded by mu_.
  uint64_t runs_ = 0;               // Guarded by mu_.
  double last_seconds_ = 0;         // Guarded by mu_.
};

}  // namespace kpulse
