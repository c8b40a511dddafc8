#include "cgroup/cgroup_labeler.h"

#include <map>

namespace kpulse {

namespace {

// More ids than any host has live cgroups: a full cache is cleared rather than evicted piecewise.
constexpr size_t kMaxCachedIds = 65536;

}  // namespace

CgroupLabeler::CgroupLabeler(CgroupPathLookup lookup, const CgroupLabelPolicy& policy)
    : lookup_(std::move(lookup)), folder_(policy) {}

std::shared_ptr<const CgroupLabels> CgroupLabeler::Sentinel(std::string_view sentinel) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const CgroupLabels>, std::less<>> sentinels;
  std::lock_guard lock(mu);
  auto it = sentinels.find(sentinel);
  if (it == sentinels.end()) {
    it = sentinels
             .emplace(std::string(sentinel),
                      std::make_shared<const CgroupLabels>(SentinelLabels(sentinel)))
             .first;
  }
  return it->second;
}

std::shared_ptr<const CgroupLabels> CgroupLabeler::LabelsOf(uint64_t cgroup_id) const {
  if (!lookup_) return Sentinel(kUnknownCgroup);
  std::optional<std::string> path = lookup_(cgroup_id);
  if (!path) return nullptr;
  std::lock_guard lock(mu_);
  if (auto it = cache_.find(cgroup_id); it != cache_.end() && it->second.path == *path) {
    return it->second.labels;
  }
  std::string folded = folder_.Fold(*path);
  auto labels = folded == kOtherCgroup
                    ? Sentinel(kOtherCgroup)
                    : std::make_shared<const CgroupLabels>(LabelsFromPath(folded));
  if (cache_.size() >= kMaxCachedIds) cache_.clear();
  cache_.insert_or_assign(cgroup_id, Cached{std::move(*path), labels});
  return labels;
}

}  // namespace kpulse
