#include "service/privileges.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>
#include <sstream>

namespace kpulse {
namespace {

// Owns a cap_t (or any libcap allocation): cap_free on destruction.
struct CapFree {
  void operator()(void* p) const { cap_free(p); }
};
using CapState = std::unique_ptr<std::remove_pointer_t<cap_t>, CapFree>;

tl::unexpected<PrivilegeError> Fail(const std::string& step, int error) {
  return tl::unexpected(PrivilegeError{error, step + ": " + std::strerror(error)});
}

std::string CapName(cap_value_t cap) {
  std::unique_ptr<char, CapFree> name(cap_to_name(cap));
  return name ? std::string(name.get()) : std::to_string(cap);
}

bool InMask(uint64_t mask, cap_value_t cap) { return cap < 64 && (mask >> cap) & 1; }

// The user database entry and groups of `user`.
struct Account {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

tl::expected<Account, PrivilegeError> LookUpUser(const std::string& user) {
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(size > 0 ? static_cast<size_t>(size) : 16384);
  passwd entry{};
  passwd* found = nullptr;
  int rc;
  while ((rc = getpwnam_r(user.c_str(), &entry, buffer.data(), buffer.size(), &found)) == ERANGE) {
    buffer.resize(buffer.size() * 2);
  }
  if (rc != 0) return Fail("getpwnam_r(" + user + ")", rc);
  if (!found) return Fail("user " + user + " is not in the user database", ENOENT);
  Account account{entry.pw_uid, entry.pw_gid, {}};
  int count = 16;
  for (;;) {
    account.groups.resize(static_cast<size_t>(count));
    int want = count;
    if (getgrouplist(user.c_str(), entry.pw_gid, account.groups.data(), &want) >= 0) {
      account.groups.resize(static_cast<size_t>(want));
      break;
    }
    if (want <= count) return Fail("getgrouplist(" + user + ")", EINVAL);
    count = want;
  }
  return account;
}

// Reads a whole small file (a /proc status file); nullopt with errno set if it cannot be read.
std::optional<std::string> ReadSmallFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char chunk[4096];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      close(fd);
      errno = error;
      return std::nullopt;
    }
    if (n == 0) break;
    text.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

// The ids after "Uid:"/"Gid:": real, effective, saved, filesystem.
template <typename Id>
bool ParseIds(std::string_view value, std::array<Id, 4>& ids) {
  for (auto& id : ids) {
    size_t start = value.find_first_not_of(" \t");
    if (start == std::string_view::npos) return false;
    value.remove_prefix(start);
    unsigned long parsed = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), parsed);
    if (ec != std::errc() || end == value.data()) return false;
    id = static_cast<Id>(parsed);
    value.remove_prefix(static_cast<size_t>(end - value.data()));
  }
  return true;
}

// Describes how `caps` exceeds the dropped state, or "" if it does not.
std::string Excess(const ThreadCaps& caps, uint64_t kept, bool check_bounding,
                   const std::optional<Account>& account) {
  std::ostringstream out;
  auto mask = [&](const char* name, uint64_t value, uint64_t allowed) {
    if (value & ~allowed) {
      out << " " << name << "=" << std::hex << value << " (kept " << allowed << ")" << std::dec;
    }
  };
  mask("CapEff", caps.eff, kept);
  mask("CapPrm", caps.prm, kept);
  mask("CapInh", caps.inh, 0);
  mask("CapAmb", caps.amb, 0);
  if (check_bounding) mask("CapBnd", caps.bnd, kept);
  if (!caps.no_new_privs) out << " NoNewPrivs=0";
  if (account) {
    for (uid_t uid : caps.uids) {
      if (uid != account->uid) {
        out << " Uid=" << caps.uids[0] << "," << caps.uids[1] << "," << caps.uids[2] << ","
            << caps.uids[3];
        break;
      }
    }
    for (gid_t gid : caps.gids) {
      if (gid != account->gid) {
        out << " Gid=" << caps.gids[0] << "," << caps.gids[1] << "," << caps.gids[2] << ","
            << caps.gids[3];
        break;
      }
    }
  }
  return out.str();
}

}  // namespace

PrivilegePlan PlanPrivileges(const PrivilegeNeeds& needs) {
  PrivilegePlan plan;
  if (needs.cgroup_file_handles) plan.keep.push_back(CAP_DAC_READ_SEARCH);
  if (needs.reload_attach) {
    plan.keep.push_back(CAP_BPF);
    plan.keep.push_back(CAP_PERFMON);
  }
  if (needs.symbolize_user_stacks) plan.keep.push_back(CAP_SYS_PTRACE);
  std::sort(plan.keep.begin(), plan.keep.end());
  plan.keep.erase(std::unique(plan.keep.begin(), plan.keep.end()), plan.keep.end());
  plan.user = needs.user;
  return plan;
}

uint64_t CapMask(const std::vector<cap_value_t>& caps) {
  uint64_t mask = 0;
  for (cap_value_t cap : caps) {
    if (cap >= 0 && cap < 64) mask |= uint64_t{1} << cap;
  }
  return mask;
}

std::string CapNames(const std::vector<cap_value_t>& caps) {
  if (caps.empty()) return "none";
  std::string names;
  for (cap_value_t cap : caps) {
    if (!names.empty()) names += ",";
    names += CapName(cap);
  }
  return names;
}

std::optional<uint64_t> ParseCapMask(std::string_view hex) {
  if (hex.empty() || hex.size() > 16) return std::nullopt;
  uint64_t mask = 0;
  auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), mask, 16);
  if (ec != std::errc() || end != hex.data() + hex.size()) return std::nullopt;
  return mask;
}

std::optional<ThreadCaps> ParseThreadStatus(std::string_view status) {
  ThreadCaps caps;
  unsigned seen = 0;
  struct Mask {
    std::string_view key;
    uint64_t ThreadCaps::*field;
  };
  static constexpr Mask kMasks[] = {{"CapEff", &ThreadCaps::eff},
                                    {"CapPrm", &ThreadCaps::prm},
                                    {"CapInh", &ThreadCaps::inh},
                                    {"CapAmb", &ThreadCaps::amb},
                                    {"CapBnd", &ThreadCaps::bnd}};
  while (!status.empty()) {
    size_t newline = status.find('\n');
    std::string_view line = status.substr(0, newline);
    status.remove_prefix(newline == std::string_view::npos ? status.size() : newline + 1);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view key = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    size_t start = value.find_first_not_of(" \t");
    value = start == std::string_view::npos ? std::string_view() : value.substr(start);
    for (size_t i = 0; i < std::size(kMasks); ++i) {
      if (key != kMasks[i].key) continue;
      auto mask = ParseCapMask(value);
      if (!mask) return std::nullopt;
      caps.*kMasks[i].field = *mask;
      seen |= 1u << i;
    }
    if (key == "NoNewPrivs") {
      if (value != "0" && value != "1") return std::nullopt;
      caps.no_new_privs = value == "1";
      seen |= 1u << 5;
    } else if (key == "Uid") {
      if (!ParseIds(value, caps.uids)) return std::nullopt;
      seen |= 1u << 6;
    } else if (key == "Gid") {
      if (!ParseIds(value, caps.gids)) return std::nullopt;
      seen |= 1u << 7;
    }
  }
  if (seen != 0xffu) return std::nullopt;
  return caps;
}

tl::expected<std::vector<ThreadCaps>, PrivilegeError> ReadThreadCaps(pid_t pid) {
  std::string task_dir =
      "/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/task";
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(task_dir.c_str()), closedir);
  if (!dir) return Fail("opendir " + task_dir, errno);
  std::vector<ThreadCaps> threads;
  for (;;) {
    errno = 0;  // readdir reports an error only through errno; a skipped thread may have set it
    dirent* entry = readdir(dir.get());
    if (entry == nullptr) break;
    pid_t tid = 0;
    std::string_view name = entry->d_name;
    auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), tid);
    if (ec != std::errc() || end != name.data() + name.size()) continue;  // "." and ".."
    std::string path = task_dir + "/" + std::string(name) + "/status";
    auto text = ReadSmallFile(path);
    if (!text) {
      if (errno == ENOENT || errno == ESRCH) continue;  // The thread exited meanwhile.
      return Fail("read " + path, errno);
    }
    if (text->empty()) continue;  // Exited between open and read.
    auto caps = ParseThreadStatus(*text);
    if (!caps) return Fail("parse " + path, EINVAL);
    caps->tid = tid;
    threads.push_back(*caps);
  }
  if (errno != 0) return Fail("readdir " + task_dir, errno);
  if (threads.empty()) return Fail("no thread status in " + task_dir, ENOENT);
  return threads;
}

tl::expected<DroppedPrivileges, PrivilegeError> DropPrivileges(const PrivilegePlan& plan) {
  DroppedPrivileges dropped;
  const cap_value_t max_bits = static_cast<cap_value_t>(cap_max_bits());
  for (cap_value_t cap : plan.keep) {
    if (cap < 0 || cap >= max_bits) {
      return Fail("capability " + std::to_string(cap) + " is not known to this kernel", EINVAL);
    }
  }

  CapState current(cap_get_proc());
  if (!current) return Fail("cap_get_proc", errno);
  auto has = [&](cap_value_t cap, cap_flag_t set) {
    cap_flag_value_t value = CAP_CLEAR;
    return cap_get_flag(current.get(), cap, set, &value) == 0 && value == CAP_SET;
  };
  for (cap_value_t cap : plan.keep) {
    if (std::find(dropped.kept.begin(), dropped.kept.end(), cap) != dropped.kept.end()) continue;
    (has(cap, CAP_PERMITTED) ? dropped.kept : dropped.missing).push_back(cap);
  }
  std::sort(dropped.kept.begin(), dropped.kept.end());
  const uint64_t kept_mask = CapMask(dropped.kept);

  // Resolve the user while NSS still works as before (files readable, no uid change yet).
  std::optional<Account> account;
  if (!plan.user.empty()) {
    auto looked_up = LookUpUser(plan.user);
    if (!looked_up) return tl::unexpected(looked_up.error());
    account = std::move(*looked_up);
  }

  // 1. The bounding set, while CAP_SETPCAP is still permitted.
  if (has(CAP_SETPCAP, CAP_PERMITTED)) {
    if (!has(CAP_SETPCAP, CAP_EFFECTIVE)) {
      const cap_value_t setpcap[] = {CAP_SETPCAP};
      if (cap_set_flag(current.get(), CAP_EFFECTIVE, 1, setpcap, CAP_SET) != 0 ||
          cap_set_proc(current.get()) != 0) {
        return Fail("cap_set_proc (raise cap_setpcap)", errno);
      }
    }
    for (cap_value_t cap = 0; cap < max_bits; ++cap) {
      if (InMask(kept_mask, cap)) continue;
      int bound = cap_get_bound(cap);
      if (bound < 0) return Fail("cap_get_bound(" + CapName(cap) + ")", errno);
      if (bound == 1 && cap_drop_bound(cap) != 0) {
        return Fail("cap_drop_bound(" + CapName(cap) + ")", errno);
      }
    }
    dropped.bounding_narrowed = true;
  }

  // 2. The ambient set: lowering needs no privilege.
  if (cap_reset_ambient() != 0) return Fail("cap_reset_ambient", errno);

  // 3. No privileges from execve (setuid/setgid bits, file capabilities) from here on.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Fail("prctl(PR_SET_NO_NEW_PRIVS)", errno);

  // 4. The user: groups first (needs CAP_SETGID), then the uid (CAP_SETUID). cap_setuid keeps
  //    the permitted set across the change (PR_SET_KEEPCAPS) and leaves the effective set empty.
  if (account) {
    bool already = getuid() == account->uid && geteuid() == account->uid &&
                   getgid() == account->gid && getegid() == account->gid;
    if (!already) {
      if (cap_setgroups(account->gid, account->groups.size(), account->groups.data()) != 0) {
        return Fail("cap_setgroups(" + plan.user + ", gid " + std::to_string(account->gid) + ")",
                    errno);
      }
      if (cap_setuid(account->uid) != 0) {
        return Fail("cap_setuid(" + plan.user + ", uid " + std::to_string(account->uid) + ")",
                    errno);
      }
    }
    dropped.user = plan.user;
  }
  dropped.uid = geteuid();
  dropped.gid = getegid();

  // 5. Effective = permitted = kept, inheritable empty.
  CapState target(cap_init());
  if (!target) return Fail("cap_init", errno);
  if (!dropped.kept.empty() &&
      (cap_set_flag(target.get(), CAP_PERMITTED, static_cast<int>(dropped.kept.size()),
                    dropped.kept.data(), CAP_SET) != 0 ||
       cap_set_flag(target.get(), CAP_EFFECTIVE, static_cast<int>(dropped.kept.size()),
                    dropped.kept.data(), CAP_SET) != 0)) {
    return Fail("cap_set_flag", errno);
  }
  if (cap_set_proc(target.get()) != 0) {
    return Fail("cap_set_proc (keep " + CapNames(dropped.kept) + ")", errno);
  }

  // 6. Self-check: every thread, not just this one.
  auto threads = ReadThreadCaps(0);
  if (!threads) return tl::unexpected(threads.error());
  for (const ThreadCaps& caps : *threads) {
    std::string excess = Excess(caps, kept_mask, dropped.bounding_narrowed, account);
    if (!excess.empty()) {
      bool self = caps.tid == gettid();
      return tl::unexpected(PrivilegeError{
          0, "thread " + std::to_string(caps.tid) + " kept more than the plan after the drop:" +
                 excess + (self ? " (the calling thread)" : " (started before DropPrivileges?)")});
    }
  }
  dropped.threads_checked = threads->size();
  return dropped;
}

void LogDroppedPrivileges(const DroppedPrivileges& dropped) {
  std::string user = dropped.user.empty() ? "uid " + std::to_string(dropped.uid) + " unchanged"
                                          : "user " + dropped.user;
  spdlog::info("dropped capabilities: kept {}; {}; no_new_privs{}", CapNames(dropped.kept), user,
               dropped.bounding_narrowed ? "" : "; bounding set left as is (no cap_setpcap)");
  if (!dropped.missing.empty()) {
    spdlog::warn(
        "capabilities {} were to be kept but the process did not have them; the "
        "features that need them fall back or fail (docs/operations.md)",
        CapNames(dropped.missing));
  }
}

}  // namespace kpulse
