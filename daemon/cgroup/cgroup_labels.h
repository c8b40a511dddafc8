#pragma once

// Who a cgroup is: the one place a cgroup v2 path becomes the labels an SRE reads (cgroup, unit,
// container_id, pod_uid, qos), and the export-side policy that decides which cgroups get series
// of their own (depth folding, allow/deny). Pure functions and immutable values: safe from any
// thread, fuzzable, no I/O.

#include <compare>
#include <cstdint>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace kpulse {

/// The `cgroup` label of what does not get a series of its own: cgroups a full kernel map could
/// not hold, cgroups the allow/deny lists fold away, and cgroups past the series cap.
inline constexpr std::string_view kOtherCgroup = "<other>";
/// The `cgroup` label of every cgroup when no cgroup2 hierarchy can be read.
inline constexpr std::string_view kUnknownCgroup = "<unknown>";

/// The label set of one cgroup series. Empty fields do not apply (never a guess).
struct CgroupLabels {
  std::string cgroup;        // path below the cgroup2 root ("/system.slice/nginx.service"), or a
                             // sentinel (kOtherCgroup, kUnknownCgroup)
  std::string unit;          // systemd unit leaf: "nginx.service", "session-3.scope", ...
  std::string container_id;  // 64 hex digits: docker, containerd, CRI-O, podman
  std::string pod_uid;       // Kubernetes pod UID with its dashes: "0f1c...-...-..."
  std::string qos;           // Kubernetes QoS class: "guaranteed" | "burstable" | "besteffort"

  auto operator<=>(const CgroupLabels&) const = default;
};

/// Labels of the cgroup at `path` (relative to the cgroup2 root, starting with '/'). The path is
/// sanitised into the `cgroup` label (valid UTF-8, bounded); every other field comes from the
/// path's components, the deepest match winning:
///   unit          a component ending in .service, .scope, .slice, .socket, .mount or .swap;
///   container_id  docker-<id>.scope, /docker/<id>, cri-containerd-<id>.scope, crio-<id>.scope,
///                 libpod-<id>.scope, or the leaf below a cgroupfs-driver pod directory;
///   pod_uid, qos  kubepods[-<qos>]-pod<uid_with_underscores>.slice (systemd driver) or
///                 /kubepods[/<qos>]/pod<uid> (cgroupfs driver); a pod directly below kubepods is
///                 guaranteed. A QoS slice alone (kubepods-burstable.slice) sets qos only.
CgroupLabels LabelsFromPath(std::string_view path);

/// Labels of a sentinel series: `cgroup` = sentinel, everything else empty.
CgroupLabels SentinelLabels(std::string_view sentinel);

/// Export-side policy of cgroup series (YAML `cgroups`): applied at scrape time, so changing it
/// needs no reload of the probes, which keep full detail.
struct CgroupLabelPolicy {
  uint32_t depth = 0;  // 0: no folding; N: a deeper cgroup is reported as its ancestor at depth N
  std::vector<std::string> allow;  // regexes (whole path); empty: every path is allowed
  std::vector<std::string> deny;   // regexes (whole path); a match folds into <other>
};

/// A CgroupLabelPolicy with its regexes compiled. Immutable; thread-safe.
class CgroupFolder {
 public:
  /// Throws std::regex_error for an invalid regex (the config parser validates them first).
  explicit CgroupFolder(const CgroupLabelPolicy& policy = {});

  /// The path a cgroup is reported under: its ancestor at `depth` (the path itself when it is not
  /// deeper), or kOtherCgroup when allow/deny (matched against that folded path) say so.
  std::string Fold(std::string_view path) const;

 private:
  uint32_t depth_;
  std::vector<std::regex> allow_, deny_;
};

/// `path` cut to its first `depth` components ("/a/b/c", 2 -> "/a/b"); depth 0 keeps it whole.
std::string AncestorAtDepth(std::string_view path, uint32_t depth);

}  // namespace kpulse
