#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "cgroup/cgroup_labels.h"

namespace kpulse {

/// Resolves a cgroup v2 id to its path below the cgroup2 root; nullopt when the cgroup is gone.
/// (The daemon wires it to CgroupResolver; tests pass fakes.)
using CgroupPathLookup = std::function<std::optional<std::string>(uint64_t cgroup_id)>;

/// The one place a cgroup id becomes a label set, for every probe: path (CgroupPathLookup), then
/// the export policy (CgroupFolder), then LabelsFromPath. Results are cached per id and path.
/// Thread-safe; LabelsOf never throws (short of allocation failure).
class CgroupLabeler {
 public:
  /// `lookup` null: no cgroup2 hierarchy is readable, and every id is kUnknownCgroup.
  explicit CgroupLabeler(CgroupPathLookup lookup, const CgroupLabelPolicy& policy = {});

  /// The label set of the live cgroup `cgroup_id`; nullptr when it is gone (or unresolvable).
  /// Equal paths give equal label sets; `cgroup` is the key that identifies one.
  std::shared_ptr<const CgroupLabels> LabelsOf(uint64_t cgroup_id) const;

  /// The label set of a sentinel series (kOtherCgroup, ...): one shared instance per sentinel.
  static std::shared_ptr<const CgroupLabels> Sentinel(std::string_view sentinel);

 private:
  struct Cached {
    std::string path;
    std::shared_ptr<const CgroupLabels> labels;
  };

  CgroupPathLookup lookup_;
  CgroupFolder folder_;
  mutable std::mutex mu_;
  mutable std::unordered_map<uint64_t, Cached> cache_;  // Guarded by mu_; cleared when full.
};

}  // namespace kpulse
