#pragma once
// Dropping privileges after start-up: what the daemon keeps, and a drop that checks itself.
//
// Capabilities, the uid and no_new_privs are per thread in Linux. DropPrivileges changes only the
// calling thread (libcap without libpsx), so it must run while the process has a single thread:
// on the main thread, after every BPF probe is loaded and attached and before the HTTP server or
// any other thread starts. It then reads /proc/self/task/*/status and fails if any thread of the
// process still holds more than the kept set, which catches a thread started too early.
//
// Error policy (docs/design.md): the kernel calls return tl::expected; the error carries errno
// and one line naming the step that failed.

#include <sys/capability.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace kpulse {

/// What the daemon still needs after start-up.
struct PrivilegeNeeds {
  // The cgroup resolver's open_by_handle_at (CAP_DAC_READ_SEARCH). Without it the resolver walks
  // the cgroup tree instead.
  bool cgroup_file_handles = false;
  // A reload may load and attach a probe that was off at start (CAP_BPF + CAP_PERFMON).
  bool reload_attach = false;
  // User frames of off-CPU stacks, symbolized at scrape time: other processes' /proc/<pid>/maps
  // and binaries under /proc/<pid>/root (CAP_SYS_PTRACE). Kernel frames need CAP_SYSLOG only
  // while /proc/kallsyms is read, at start-up (OffcpuStacksEndpoint), so it is not kept.
  bool symbolize_user_stacks = false;
  // Empty: keep the current uid/gid. Otherwise switch to this user of the user database, its
  // primary group and its supplementary groups (getgrouplist).
  std::string user;
};

/// The result of PlanPrivileges: the input of DropPrivileges.
struct PrivilegePlan {
  // Capabilities kept in the effective and permitted sets (and the bounding set), sorted, no
  // duplicates. Everything else is dropped; inheritable and ambient sets end up empty.
  std::vector<cap_value_t> keep;
  // Empty: stay as is; else switch to this user, keeping `keep` across the uid change.
  std::string user;
};

/// Builds the plan from the daemon's needs. RLIMIT_MEMLOCK needs no CAP_SYS_RESOURCE: since 5.11
/// BPF memory is charged to the memory cgroup (docs/privileges-notes.md).
PrivilegePlan PlanPrivileges(const PrivilegeNeeds& needs);

/// A failed step of DropPrivileges or ReadThreadCaps.
struct PrivilegeError {
  int error = 0;        // errno of the failed call; 0 when the self-check found extra privileges
  std::string message;  // one line: the step, the object and strerror(error)
};

/// What DropPrivileges did, for LogDroppedPrivileges and tests.
struct DroppedPrivileges {
  std::vector<cap_value_t> kept;     // plan.keep that the process had, now effective+permitted
  std::vector<cap_value_t> missing;  // plan.keep that was not permitted: not an error
  bool bounding_narrowed = false;    // bounding set cut to `kept` (needs CAP_SETPCAP)
  std::string user;                  // the user switched to; empty when the uid did not change
  uid_t uid = 0;
  gid_t gid = 0;
  size_t threads_checked = 0;
};

/// Drops the calling thread's privileges to `plan`, in this order: raises CAP_SETPCAP in the
/// effective set if permitted and cuts the bounding set to `keep` (without CAP_SETPCAP the
/// bounding set stays as it is, reported in `bounding_narrowed`); clears the ambient set; sets
/// PR_SET_NO_NEW_PRIVS; switches to `plan.user` if given (cap_setgroups, then cap_setuid, which
/// keeps the permitted set across the uid change); sets effective = permitted = `kept` and
/// inheritable = 0. Then reads every thread's status and fails unless each has CapEff, CapPrm
/// and (if narrowed) CapBnd within `kept`, CapInh = CapAmb = 0, NoNewPrivs 1 and, after a user
/// switch, all four uids and gids of the user.
///
/// Keeping a capability that is not permitted is not an error: it is listed in `missing` (the
/// daemon falls back, e.g. the cgroup resolver walks the tree without CAP_DAC_READ_SEARCH).
/// Dropping what the process does not have succeeds, so this works as root and as a service user
/// with AmbientCapabilities=. Switching users needs CAP_SETUID and CAP_SETGID unless the process
/// already runs as that user and group. On error the thread may be left half-dropped: exit.
tl::expected<DroppedPrivileges, PrivilegeError> DropPrivileges(const PrivilegePlan& plan);

/// One info line ("dropped capabilities: kept cap_bpf,cap_perfmon; user kpulse; no_new_privs"),
/// plus a warning naming the capabilities kept in the plan that the process did not have.
void LogDroppedPrivileges(const DroppedPrivileges& dropped);

/// Comma-separated libcap names ("cap_bpf,cap_perfmon"), or "none".
std::string CapNames(const std::vector<cap_value_t>& caps);

/// Bit mask of `caps` as /proc/<pid>/status prints it (bit n = capability n).
uint64_t CapMask(const std::vector<cap_value_t>& caps);

/// The privilege state of one thread, from /proc/<pid>/task/<tid>/status.
struct ThreadCaps {
  pid_t tid = 0;
  uint64_t eff = 0, prm = 0, inh = 0, amb = 0, bnd = 0;
  bool no_new_privs = false;
  std::array<uid_t, 4> uids{};  // real, effective, saved, filesystem
  std::array<gid_t, 4> gids{};
};

/// Parses a CapEff-style hex mask ("000001ffffffffff"); nullopt if it is not 1..16 hex digits.
std::optional<uint64_t> ParseCapMask(std::string_view hex);

/// Parses the text of a status file; nullopt if a Cap*, NoNewPrivs, Uid or Gid line is missing
/// or malformed. `tid` is left 0.
std::optional<ThreadCaps> ParseThreadStatus(std::string_view status);

/// Every thread of `pid` (0: this process), from /proc/<pid>/task/*/status. A thread that exits
/// while being read is left out.
tl::expected<std::vector<ThreadCaps>, PrivilegeError> ReadThreadCaps(pid_t pid = 0);

}  // namespace kpulse
