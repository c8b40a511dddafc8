#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace kpulse {

/// Mount point of the cgroup v2 hierarchy listed in a mountinfo file (fstype "cgroup2", the field
/// after the " - " separator), with mountinfo's octal escapes (\040 for space etc.) undone.
/// Prefers a mount of the whole hierarchy (root field "/") over a bind mount of a subtree; among
/// equals, the first listed. nullopt if there is none or the file cannot be read.
std::optional<std::string> FindCgroup2Mount(
    const std::string& mountinfo_path = "/proc/self/mountinfo");

/// Tuning knobs of CgroupResolver; the defaults are what the daemon uses.
struct CgroupResolverOptions {
  // Try open_by_handle_at first (needs CAP_DAC_READ_SEARCH and a kernfs tree). false: directory
  // walk only.
  bool use_file_handles = true;
  // The directory walk runs again on a miss at most this often, so a scrape full of deleted ids
  // does not walk the tree once per id.
  std::chrono::milliseconds min_rescan_interval{1000};
  // Positive results cached; the cache is cleared when it reaches this size.
  size_t max_cached = 65536;
};

/// Maps cgroup v2 ids (== inode number of the cgroup's directory == kernfs node id) to paths
/// relative to the cgroup2 root: "/" for the root itself, "/system.slice/nginx.service" below it.
///
/// Resolution: an O(1) open_by_handle_at with a kernfs file handle when the process has
/// CAP_DAC_READ_SEARCH; otherwise (privileges dropped, not a kernfs tree, /proc missing) a walk of
/// the tree that builds an id -> path index, repeated on a miss at most once per
/// `min_rescan_interval`. Positive results are cached, and a cached path is re-checked with one
/// fstatat (same inode?) before it is returned, so deleted cgroups stop resolving.
///
/// Thread-safe: PathOf is called concurrently from HTTP threads at scrape time. PathOf never throws
/// (short of allocation failure). The resolver owns an fd of the root directory for its lifetime.
class CgroupResolver {
 public:
  /// Opens `cgroup2_root`. Throws std::system_error if it cannot be opened (start-up only).
  explicit CgroupResolver(std::string cgroup2_root, CgroupResolverOptions options = {});
  ~CgroupResolver();
  CgroupResolver(const CgroupResolver&) = delete;
  CgroupResolver& operator=(const CgroupResolver&) = delete;

  /// Path of the live cgroup with this id, or nullopt if there is none (deleted, never existed,
  /// or outside the mounted tree).
  std::optional<std::string> PathOf(uint64_t cgroup_id);

  /// Whether the cgroup with this id is known to have been removed; false when it lives or when
  /// that cannot be told (outside the mounted tree, transient errors). By file handle where
  /// possible; otherwise by a directory walk that started no earlier than `not_before` (one walk
  /// serves a whole sweep: pass the time the caller read the ids it asks about, or earlier).
  bool IsGone(uint64_t cgroup_id, std::chrono::steady_clock::time_point not_before);

  /// The root as given to the constructor.
  const std::string& root() const { return root_; }

  /// Whether open_by_handle_at is still in use (false once it failed for lack of privilege).
  bool uses_file_handles() const { return use_handles_.load(std::memory_order_relaxed); }

 private:
  enum class HandleResult { kFound, kGone, kOutside, kUnsupported, kFailed };

  HandleResult ResolveByHandle(uint64_t cgroup_id, std::string& path, int& error) const;
  std::optional<std::string> ResolveByWalk(uint64_t cgroup_id);  // Requires mu_.
  void Walk();                                                   // Requires mu_.
  bool StillValid(uint64_t cgroup_id, const std::string& path) const;
  void Remember(uint64_t cgroup_id, const std::string& path);  // Requires mu_.

  const std::string root_;
  const CgroupResolverOptions options_;
  int root_fd_ = -1;
  dev_t root_dev_ = 0;
  std::string link_prefix_;  // The root as /proc/self/fd/N spells it; "" when the root is "/".
  std::atomic<bool> use_handles_{false};

  std::mutex mu_;
  std::unordered_map<uint64_t, std::string> cache_;  // Guarded by mu_.
  std::unordered_map<uint64_t, std::string> index_;  // Guarded by mu_; built by the last walk.
  std::optional<std::chrono::steady_clock::time_point> last_walk_;  // Guarded by mu_.
};

}  // namespace kpulse
