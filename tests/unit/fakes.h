#pragma once
// Shared fakes for unit tests: a cgroup labeler over a fixed id -> path table, histograms, and
// fake map sources for the collectors.

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"

namespace kpulse::test {

/// A labeler over `paths` (ids missing from it are removed cgroups).
inline std::shared_ptr<const CgroupLabeler> Paths(std::map<uint64_t, std::string> paths,
                                                  const CgroupLabelPolicy& policy = {}) {
  return std::make_shared<const CgroupLabeler>(
      [paths](uint64_t id) -> std::optional<std::string> {
        auto it = paths.find(id);
        if (it == paths.end()) return std::nullopt;
        return it->second;
      },
      policy);
}

/// A histogram with `count` observations in slot `slot`, summing to `sum_ns`.
inline sched_hist Hist(int slot, uint64_t count, uint64_t sum_ns) {
  sched_hist hist{};
  hist.slots[slot] = count;
  hist.sum_ns = sum_ns;
  return hist;
}

/// A histogram with counts per slot.
inline sched_hist Hist(const std::map<int, uint64_t>& slots, uint64_t sum_ns) {
  sched_hist hist{};
  for (const auto& [slot, count] : slots) hist.slots[slot] = count;
  hist.sum_ns = sum_ns;
  return hist;
}

class FakeRunqueueSource : public RunqueueSource {
 public:
  tl::expected<RunqueueSnapshot, std::string> RunqueueSnapshotNow() const override {
    if (!error.empty()) return tl::unexpected(error);
    RunqueueSnapshot out = snapshot;
    snapshot.retired.clear();  // given once, as the probe does
    return out;
  }
  mutable RunqueueSnapshot snapshot;
  std::string error;
};

class FakeOffcpuSource : public OffcpuSource {
 public:
  tl::expected<OffcpuSnapshot, std::string> OffcpuSnapshotNow() const override {
    if (!error.empty()) return tl::unexpected(error);
    OffcpuSnapshot out = snapshot;
    snapshot.retired.clear();
    return out;
  }
  tl::expected<std::vector<OffcpuStack>, std::string> OffcpuStacksNow() const override {
    // Each call returns the next prepared reading (the last one repeats).
    const size_t index = std::min(calls_++, stacks.size() - 1);
    return stacks[index];
  }
  mutable OffcpuSnapshot snapshot;
  std::vector<std::vector<OffcpuStack>> stacks = {{}};
  std::string error;

 private:
  mutable size_t calls_ = 0;
};

class FakeRetransSource : public RetransSource {
 public:
  tl::expected<RetransSnapshot, std::string> Snapshot() const override {
    if (!error.empty()) return tl::unexpected(error);
    RetransSnapshot out = snapshot;
    snapshot.retired.clear();
    return out;
  }
  std::string_view hook() const override { return "tp_btf"; }
  bool reports_failures() const override { return failures; }

  mutable RetransSnapshot snapshot;
  bool failures = true;
  std::string error;
};

}  // namespace kpulse::test
