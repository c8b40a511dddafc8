#include "cgroup/cgroup_labels.h"

#include <algorithm>
#include <array>

#include "util/label_value.h"

namespace kpulse {

namespace {

constexpr size_t kContainerIdLength = 64;

bool IsLowerHex(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool IsContainerId(std::string_view text) {
  return text.size() == kContainerIdLength && IsLowerHex(text);
}

// A pod UID as Kubernetes writes it (8-4-4-4-12 hex digits) with `separator` between the groups:
// '-' in cgroupfs paths, '_' in systemd slice names. Returns the UID with dashes, or "".
std::string PodUid(std::string_view text, char separator) {
  static constexpr std::array<size_t, 5> kGroups = {8, 4, 4, 4, 12};
  std::string uid;
  size_t pos = 0;
  for (size_t group = 0; group < kGroups.size(); ++group) {
    if (group > 0) {
      if (pos >= text.size() || text[pos] != separator) return "";
      uid += '-';
      ++pos;
    }
    const std::string_view digits = text.substr(pos, kGroups[group]);
    if (digits.size() != kGroups[group] || !IsLowerHex(digits)) return "";
    uid += digits;
    pos += kGroups[group];
  }
  return pos == text.size() ? uid : "";
}

bool IsQosClass(std::string_view name) { return name == "burstable" || name == "besteffort"; }

// "<prefix><64 hex><suffix>" -> the hex, else "".
std::string_view IdBetween(std::string_view component, std::string_view prefix,
                           std::string_view suffix) {
  if (!component.starts_with(prefix) || !component.ends_with(suffix)) return {};
  const std::string_view id =
      component.substr(prefix.size(), component.size() - prefix.size() - suffix.size());
  return IsContainerId(id) ? id : std::string_view{};
}

std::string_view ContainerIdOfScope(std::string_view component) {
  // The runtimes' own scope names (conmon-*.scope are monitors, not containers: not hex).
  static constexpr std::array<std::string_view, 4> kPrefixes = {"docker-", "cri-containerd-",
                                                                "crio-", "libpod-"};
  for (std::string_view prefix : kPrefixes) {
    if (auto id = IdBetween(component, prefix, ".scope"); !id.empty()) return id;
  }
  return IdBetween(component, "libpod-", "");  // podman's cgroupfs manager
}

bool IsUnitName(std::string_view component) {
  static constexpr std::array<std::string_view, 6> kSuffixes = {".service", ".scope", ".slice",
                                                                ".socket",  ".mount", ".swap"};
  return std::any_of(kSuffixes.begin(), kSuffixes.end(), [&](std::string_view suffix) {
    return component.size() > suffix.size() && component.ends_with(suffix);
  });
}

// systemd driver: "kubepods[-<qos>][-pod<uid_with_underscores>].slice".
void ParseKubepodsSlice(std::string_view component, CgroupLabels& labels) {
  if (!component.starts_with("kubepods") || !component.ends_with(".slice")) return;
  std::string_view rest = component.substr(8, component.size() - 8 - 6);
  if (rest.empty()) return;  // kubepods.slice itself
  if (rest.front() != '-') return;
  rest.remove_prefix(1);
  std::string_view qos = "guaranteed";  // a pod directly below kubepods
  for (std::string_view cls : {std::string_view("burstable"), std::string_view("besteffort")}) {
    if (rest == cls) {
      labels.qos = cls;
      return;
    }
    if (rest.starts_with(cls) && rest.size() > cls.size() && rest[cls.size()] == '-') {
      qos = cls;
      rest.remove_prefix(cls.size() + 1);
      break;
    }
  }
  if (!rest.starts_with("pod")) return;
  std::string uid = PodUid(rest.substr(3), '_');
  if (uid.empty()) return;
  labels.pod_uid = std::move(uid);
  labels.qos = qos;
}

}  // namespace

CgroupLabels LabelsFromPath(std::string_view path) {
  CgroupLabels labels;
  labels.cgroup = SanitizeLabelValue(path);
  std::vector<std::string_view> parts;
  for (size_t pos = 0; pos < path.size();) {
    const size_t end = std::min(path.find('/', pos), path.size());
    if (end > pos) parts.push_back(path.substr(pos, end - pos));
    pos = end + 1;
  }
  bool in_cgroupfs_pod = false;  // the previous component was a cgroupfs-driver pod directory
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string_view part = parts[i];
    const std::string_view parent = i > 0 ? parts[i - 1] : std::string_view{};
    const std::string_view grandparent = i > 1 ? parts[i - 2] : std::string_view{};
    if (IsUnitName(part)) labels.unit = SanitizeLabelValue(part);
    if (auto id = ContainerIdOfScope(part); !id.empty()) labels.container_id = id;
    if (parent == "docker" && IsContainerId(part)) labels.container_id = part;
    if (in_cgroupfs_pod && IsContainerId(part)) labels.container_id = part;
    ParseKubepodsSlice(part, labels);
    // cgroupfs driver: /kubepods[/<qos>]/pod<uid>[/<container id>]
    in_cgroupfs_pod = false;
    if (parent == "kubepods" && IsQosClass(part)) labels.qos = part;
    if (part.starts_with("pod")) {
      const bool guaranteed = parent == "kubepods";
      const bool classed = IsQosClass(parent) && grandparent == "kubepods";
      std::string uid = (guaranteed || classed) ? PodUid(part.substr(3), '-') : "";
      if (!uid.empty()) {
        labels.pod_uid = std::move(uid);
        labels.qos = guaranteed ? "guaranteed" : std::string(parent);
        in_cgroupfs_pod = true;
      }
    }
  }
  return labels;
}

CgroupLabels SentinelLabels(std::string_view sentinel) {
  CgroupLabels labels;
  labels.cgroup = sentinel;
  return labels;
}

std::string AncestorAtDepth(std::string_view path, uint32_t depth) {
  if (depth == 0) return std::string(path);
  size_t pos = 0;
  for (uint32_t level = 0; level < depth; ++level) {
    pos = path.find('/', pos + 1);
    if (pos == std::string_view::npos) return std::string(path);
  }
  return std::string(path.substr(0, pos));
}

CgroupFolder::CgroupFolder(const CgroupLabelPolicy& policy) : depth_(policy.depth) {
  for (const std::string& regex : policy.allow) allow_.emplace_back(regex, std::regex::ECMAScript);
  for (const std::string& regex : policy.deny) deny_.emplace_back(regex, std::regex::ECMAScript);
}

std::string CgroupFolder::Fold(std::string_view path) const {
  std::string folded = AncestorAtDepth(path, depth_);
  const auto matches = [&](const std::regex& regex) { return std::regex_match(folded, regex); };
  const bool allowed = allow_.empty() || std::any_of(allow_.begin(), allow_.end(), matches);
  if (!allowed || std::any_of(deny_.begin(), deny_.end(), matches)) {
    return std::string(kOtherCgroup);
  }
  return folded;
}

}  // namespace kpulse
