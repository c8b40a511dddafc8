#include "service/cgroup_sweeper.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "cgroup/cgroup_resolver.h"
#include "collect/family_builder.h"

namespace kpulse {

CgroupSweeper::CgroupSweeper(std::shared_ptr<CgroupResolver> resolver)
    : resolver_(std::move(resolver)) {}

CgroupSweeper::~CgroupSweeper() = default;

void CgroupSweeper::Add(std::string map, Sweep sweep) {
  std::lock_guard lock(mu_);
  for (Registered& registered : sweeps_) {
    if (registered.map == map) {
      registered.sweep = std::move(sweep);  // a reloaded probe's map: its counters go on
      return;
    }
  }
  sweeps_.push_back({std::move(map), std::move(sweep)});
}

void CgroupSweeper::Remove(const std::string& map) {
  std::lock_guard lock(mu_);
  for (Registered& registered : sweeps_) {
    if (registered.map == map) registered.sweep = nullptr;
  }
}

void CgroupSweeper::SweepNow() {
  if (!resolver_) return;
  std::lock_guard lock(mu_);
  const auto start = std::chrono::steady_clock::now();
  // One walk (when walking at all) serves the whole sweep: it starts after each sweep read the
  // ids it asks about, so a cgroup missing from it is gone, not new.
  const Gone gone = [this, start](uint64_t id) { return resolver_->IsGone(id, start); };
  for (Registered& registered : sweeps_) {
    if (!registered.sweep) continue;  // its probe is off
    auto removed = registered.sweep(gone);
    if (removed) {
      registered.removed += *removed;
      continue;
    }
    if (registered.errors++ == 0) {
      spdlog::error(
          "sweeping {} for removed cgroups failed: {} (logged once; counted in "
          "kpulse_cgroup_sweep_errors_total)",
          registered.map, removed.error());
    }
  }
  ++runs_;
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<prometheus::MetricFamily> CgroupSweeper::Collect() const {
  std::lock_guard lock(mu_);
  using prometheus::MetricType;
  auto runs =
      MakeFamily("kpulse_cgroup_sweeps_total",
                 "Sweeps that gave back the kernel state of removed cgroups.", MetricType::Counter);
  AddSample(runs, {}, static_cast<double>(runs_));
  auto seconds = MakeFamily("kpulse_cgroup_sweep_duration_seconds",
                            "Duration of the last sweep for removed cgroups.", MetricType::Gauge);
  AddSample(seconds, {}, last_seconds_);
  auto removed = MakeFamily("kpulse_cgroup_sweep_removed_total",
                            "Entries (scheduler: slots) of removed cgroups given back, by map.",
                            MetricType::Counter);
  auto errors = MakeFamily("kpulse_cgroup_sweep_errors_total",
                           "Sweeps of a map for removed cgroups that failed.", MetricType::Counter);
  for (const Registered& registered : sweeps_) {
    AddSample(removed, {{"map", registered.map}}, static_cast<double>(registered.removed));
    AddSample(errors, {{"map", registered.map}}, static_cast<double>(registered.errors));
  }
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(runs));
  families.push_back(std::move(seconds));
  families.push_back(std::move(removed));
  families.push_back(std::move(errors));
  return families;
}

}  // namespace kpulse
