#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace kpulse {

/// Resolves a cgroup v2 id to its path below the cgroup2 root; nullopt when the cgroup is gone.
/// (The daemon wires it to CgroupResolver; tests pass fakes.)
using CgroupPathLookup = std::function<std::optional<std::string>(uint64_t cgroup_id)>;

/// The `cgroup` label of cgroups that no longer exist: their series fold into one.
inline constexpr const char* kDeletedCgroupLabel = "<deleted>";
/// The `cgroup` label of what a full kernel map could not hold, so sums still match totals.
inline constexpr const char* kOverflowCgroupLabel = "<other>";

/// The one place a cgroup id becomes a label value: the path, sanitised (valid UTF-8, bounded),
/// or kDeletedCgroupLabel.
std::string CgroupLabel(const CgroupPathLookup& lookup, uint64_t cgroup_id);

}  // namespace kpulse
