#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cgroup/cgroup_labeler.h"
#include "collect/series_limiter.h"

namespace kpulse {

/// How per-cgroup values add up. Collectors provide overloads for their value types (counters
/// here; scheduler histograms in bpf/sched_probe.h).
inline void SeriesAdd(uint64_t& sum, uint64_t value) { sum += value; }
inline uint64_t SeriesSignature(uint64_t value) { return value; }

/// The one place per-cgroup kernel data becomes series, for every probe. Each scrape it
///   - turns cgroup ids into label sets (CgroupLabeler) and sums the entries sharing one (depth
///     folding, allow/deny, several ids at one path);
///   - keeps the final counts of removed cgroups (the probes' `retired` records): while another
///     cgroup of the same label set lives, in that series, so a folded series never goes
///     backwards; otherwise in the family's deleted totals (`Result::deleted`);
///   - caps the family and hides idle series (SeriesLimiter): what is capped folds into <other>,
///     and stays in it when it disappears, so <other> never goes backwards either.
/// Memory: state for the label sets and ids present in the last update, plus one accumulator per
/// live label set, all bounded by the kernel maps. Thread-safe (updates are serialised).
template <typename Value>
class CgroupSeries {
 public:
  struct Entry {
    uint64_t cgroup_id;
    uint32_t sub;  // the family's other dimension: kind, state, CPU
    Value value;
  };
  struct Series {
    std::shared_ptr<const CgroupLabels> labels;
    uint32_t sub;
    Value value;
  };
  struct Result {
    std::vector<Series> series;         // visible series, <other> included, ordered by label
    std::map<uint32_t, Value> deleted;  // removed cgroups' counts, by sub
    std::map<uint32_t, Value> held;     // everything in `series` plus hidden ones, by sub
    uint64_t folded_total = 0;          // label sets folded by the cap since start
  };

  CgroupSeries(std::string family, SeriesPolicy policy) : limiter_(std::move(family), policy) {}

  /// A reload's new cap and idle TTL (SeriesLimiter::SetPolicy).
  void SetPolicy(SeriesPolicy policy) {
    std::lock_guard lock(mu_);
    limiter_.SetPolicy(policy);
  }

  /// `live`: the kernel's entries now (removed cgroups' included until their retirement);
  /// `retired`: final counts of removed cgroups, each given once; `overflow`: what the kernel
  /// could not give a cgroup entry (cgroup id ignored), shown as <other>.
  Result Update(const std::vector<Entry>& live, const std::vector<Entry>& retired,
                const std::vector<Entry>& overflow, const CgroupLabeler& labeler,
                std::chrono::steady_clock::time_point now) {
    std::lock_guard lock(mu_);
    const std::string other_key(kOtherCgroup);
    // 1. Label sets of the ids present; a removed id keeps the one it had while it lived.
    std::unordered_map<uint64_t, Member> members;
    std::set<std::string> alive{other_key};
    for (const Entry& entry : live) {
      if (members.contains(entry.cgroup_id)) continue;
      Member member;
      if (auto labels = labeler.LabelsOf(entry.cgroup_id)) {
        member.key = labels->cgroup;
        member.labels = std::move(labels);
        member.live = true;
        alive.insert(member.key);
      } else if (auto old = members_.find(entry.cgroup_id); old != members_.end()) {
        member = old->second;
        member.live = false;
      } else {
        member.route = Member::kDeleted;  // removed before it was ever labelled
      }
      members.emplace(entry.cgroup_id, std::move(member));
    }
    // A removed cgroup stays in its label set's series while another member lives; the first
    // update that finds none decides, once and for good, where its counts go from then on
    // (deciding again later would move counts back out of a family).
    for (auto& [id, member] : members) Route(member, alive);
    // 2. Retired counts follow their cgroup's route.
    for (const Entry& entry : retired) {
      Member* member = Find(entry.cgroup_id, members);
      if (member) Route(*member, alive);
      if (member && member->route == Member::kSeries) {
        Accumulated& acc = accumulated_[{member->key, entry.sub}];
        SeriesAdd(acc.value, entry.value);
        acc.labels = member->labels;
      } else {
        SeriesAdd((member && member->route == Member::kOther ? other_ : deleted_)[entry.sub],
                  entry.value);
      }
    }
    // 3. Accumulators of label sets with no live cgroup left follow them out.
    for (auto it = accumulated_.begin(); it != accumulated_.end();) {
      if (alive.contains(it->first.first)) {
        ++it;
        continue;
      }
      SeriesAdd((folded_keys_.contains(it->first.first) ? other_ : deleted_)[it->first.second],
                it->second.value);
      it = accumulated_.erase(it);
    }
    // 4. Sum by label set.
    std::map<std::string, Group> groups;
    std::map<uint32_t, Value> deleted = deleted_, other = other_;
    for (const auto& [key, acc] : accumulated_) {
      Group& group = groups[key.first];
      group.labels = acc.labels;
      SeriesAdd(group.values[key.second], acc.value);
    }
    for (const Entry& entry : live) {
      const Member& member = members.at(entry.cgroup_id);
      if (member.route == Member::kSeries) {
        Group& group = groups[member.key];
        if (!group.labels) group.labels = member.labels;
        SeriesAdd(group.values[entry.sub], entry.value);
      } else {  // removed, its label set gone with it, until it is retired
        SeriesAdd((member.route == Member::kOther ? other : deleted)[entry.sub], entry.value);
      }
    }
    for (const Entry& entry : overflow) SeriesAdd(other[entry.sub], entry.value);
    // 5. Cap and idle TTL; <other> is always exported and never capped.
    Result result;
    Group other_group;
    if (auto it = groups.find(other_key); it != groups.end()) {
      other_group = std::move(it->second);
      groups.erase(it);
      for (const auto& [sub, value] : other_group.values) SeriesAdd(result.held[sub], value);
    }
    other_group.labels = CgroupLabeler::Sentinel(kOtherCgroup);
    for (const auto& [sub, value] : other) SeriesAdd(other_group.values[sub], value);
    std::vector<typename SeriesLimiter<std::string>::Input> inputs;
    inputs.reserve(groups.size());
    for (const auto& [key, group] : groups) {
      uint64_t signature = 0;
      for (const auto& [sub, value] : group.values)
        signature = signature * 31 + SeriesSignature(value);
      inputs.push_back({key, signature, group.values.size()});
    }
    const std::vector<SeriesFate> fates =
        limiter_.Update(inputs, std::max<size_t>(other_group.values.size(), 1), now);
    std::set<std::string> folded;
    size_t i = 0;
    for (auto& [key, group] : groups) {
      const SeriesFate fate = fates[i++];
      for (const auto& [sub, value] : group.values) SeriesAdd(result.held[sub], value);
      if (fate == SeriesFate::kFolded) {
        folded.insert(key);
        for (const auto& [sub, value] : group.values) SeriesAdd(other_group.values[sub], value);
      } else if (fate == SeriesFate::kVisible) {
        for (const auto& [sub, value] : group.values)
          result.series.push_back({group.labels, sub, value});
      }
    }
    for (const auto& [sub, value] : other) SeriesAdd(result.held[sub], value);
    for (const auto& [sub, value] : other_group.values) {
      result.series.push_back({other_group.labels, sub, value});
    }
    // 6. Remember who was where for the next update.
    for (auto& [id, member] : members) {
      if (member.route == Member::kSeries) member.folded = folded.contains(member.key);
    }
    members_ = std::move(members);
    folded_keys_ = std::move(folded);
    result.deleted = std::move(deleted);
    result.folded_total = limiter_.folded_total();
    return result;
  }

 private:
  struct Member {
    enum RouteTo { kSeries, kDeleted, kOther };
    std::string key;  // the label set's `cgroup`; empty: never labelled (removed before)
    std::shared_ptr<const CgroupLabels> labels;
    bool live = false;        // labelled at this update
    bool folded = false;      // its label set was folded into <other> at the last update
    RouteTo route = kSeries;  // where its counts go; leaves kSeries once, never comes back
  };
  struct Accumulated {
    std::shared_ptr<const CgroupLabels> labels;
    Value value{};
  };
  struct Group {
    std::shared_ptr<const CgroupLabels> labels;
    std::map<uint32_t, Value> values;
  };

  Member* Find(uint64_t id, std::unordered_map<uint64_t, Member>& members) {
    if (auto it = members.find(id); it != members.end() && it->second.labels) return &it->second;
    if (auto it = members_.find(id); it != members_.end() && it->second.labels) return &it->second;
    return nullptr;
  }
  // A removed member whose label set has no live member left leaves it: for <other> if that
  // label set was folded there, else for the deleted totals.
  void Route(Member& member, const std::set<std::string>& alive) const {
    if (member.route != Member::kSeries || member.live || alive.contains(member.key)) return;
    member.route =
        member.folded || folded_keys_.contains(member.key) ? Member::kOther : Member::kDeleted;
  }

  std::mutex mu_;
  SeriesLimiter<std::string> limiter_;                                   // Guarded by mu_.
  std::unordered_map<uint64_t, Member> members_;                         // Guarded by mu_.
  std::map<std::pair<std::string, uint32_t>, Accumulated> accumulated_;  // Guarded by mu_.
  std::set<std::string> folded_keys_;                                    // Guarded by mu_.
  std::map<uint32_t, Value> deleted_;  // removed cgroups' counts; Guarded by mu_.
  std::map<uint32_t, Value> other_;    // departed <other> members' counts; Guarded by mu_.
};

}  // namespace kpulse
