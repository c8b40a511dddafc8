#pragma once
// A CgroupPathLookup over a fixed id -> path table, for collector tests.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "collect/cgroup_label.h"

namespace kpulse::test {

inline CgroupPathLookup Paths(std::map<uint64_t, std::string> paths) {
  return [paths](uint64_t id) -> std::optional<std::string> {
    auto it = paths.find(id);
    if (it == paths.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace kpulse::test
