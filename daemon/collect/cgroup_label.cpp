#include "collect/cgroup_label.h"

#include "util/label_value.h"

namespace kpulse {

std::string CgroupLabel(const CgroupPathLookup& lookup, uint64_t cgroup_id) {
  const std::optional<std::string> path = lookup ? lookup(cgroup_id) : std::nullopt;
  return path ? SanitizeLabelValue(*path) : kDeletedCgroupLabel;
}

}  // namespace kpulse
