#include "service/privileges.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "cgroup/cgroup_resolver.h"

namespace kpulse {
namespace {

bool InCi() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// The drop tests change a process's privileges, so they need root (and run in forked children);
// under CI=true a skip is a failure. (tests/bpf/test_env.h has the same macro for the BPF tier,
// but its InCi() lives in test_env.cpp, which the unit tests do not link.)
#define REQUIRE_ROOT_FOR_DROP()                                                             \
  do {                                                                                      \
    if (::geteuid() != 0) {                                                                 \
      if (InCi()) FAIL() << "privilege drop tests need root, and CI must run them";         \
      GTEST_SKIP() << "privilege drop tests need root (they drop capabilities in a child)"; \
    }                                                                                       \
  } while (0)

// Runs `body` in a forked child (the test process keeps its privileges). Returns "" when the
// body returned "" and the child exited 0, else what went wrong.
std::string InChild(const std::function<std::string()>& body) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::string("pipe2: ") + std::strerror(errno);
  pid_t pid = fork();
  if (pid < 0) return std::string("fork: ") + std::strerror(errno);
  if (pid == 0) {
    close(fds[0]);
    std::string failure = body();
    size_t done = 0;
    while (done < failure.size()) {
      ssize_t n = write(fds[1], failure.data() + done, failure.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    _exit(failure.empty() ? 0 : 1);
  }
  close(fds[1]);
  std::string failure;
  char chunk[512];
  ssize_t n;
  while ((n = read(fds[0], chunk, sizeof chunk)) > 0) failure.append(chunk, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return std::string("waitpid: ") + std::strerror(errno);
  if (WIFSIGNALED(status))
    return failure + " (child killed by signal " + std::to_string(WTERMSIG(status)) + ")";
  if (WEXITSTATUS(status) != 0 && failure.empty())
    return "child exited " + std::to_string(WEXITSTATUS(status));
  return failure;
}

std::string Hex(uint64_t value) {
  char text[32];
  std::snprintf(text, sizeof text, "%llx", static_cast<unsigned long long>(value));
  return text;
}

// "" when every thread of this process is exactly in the dropped state for `keep`.
std::string CheckAllThreads(const std::vector<cap_value_t>& keep, bool bounding = true) {
  auto threads = ReadThreadCaps(0);
  if (!threads) return threads.error().message;
  const uint64_t mask = CapMask(keep);
  std::string failure;
  for (const ThreadCaps& t : *threads) {
    std::string tid = "thread " + std::to_string(t.tid) + ": ";
    if (t.eff != mask) failure += tid + "CapEff " + Hex(t.eff) + " != " + Hex(mask) + "\n";
    if (t.prm != mask) failure += tid + "CapPrm " + Hex(t.prm) + " != " + Hex(mask) + "\n";
    if (t.inh != 0) failure += tid + "CapInh " + Hex(t.inh) + " != 0\n";
    if (t.amb != 0) failure += tid + "CapAmb " + Hex(t.amb) + " != 0\n";
    if (bounding && t.bnd != mask) {
      failure += tid + "CapBnd " + Hex(t.bnd) + " != " + Hex(mask) + "\n";
    }
    if (!t.no_new_privs) failure += tid + "NoNewPrivs 0\n";
  }
  return failure;
}

std::string Drop(const std::vector<cap_value_t>& keep, const std::string& user = "") {
  auto dropped = DropPrivileges(PrivilegePlan{keep, user});
  if (!dropped) return "DropPrivileges: " + dropped.error().message;
  return "";
}

passwd Nobody() {
  passwd* entry = getpwnam("nobody");
  return entry ? *entry : passwd{};
}

// bpf_map_create of a small ARRAY: the fd (closed) as 0, or -errno.
int CreateArrayMap(uint32_t value_size = 8, uint32_t entries = 4) {
  int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "kpulse_priv", 4, value_size, entries, nullptr);
  if (fd < 0) return -errno;
  close(fd);
  return 0;
}

TEST(PrivilegesParseTest, CapMaskParsesProcHex) {
  EXPECT_EQ(ParseCapMask("000001ffffffffff"), 0x1ffffffffffULL);
  EXPECT_EQ(ParseCapMask("0000000000000000"), 0u);
  EXPECT_EQ(ParseCapMask("00000000a80425fb"), 0xa80425fbULL);
}

TEST(PrivilegesParseTest, CapMaskRejectsNonHexAndOverlongText) {
  EXPECT_FALSE(ParseCapMask(""));
  EXPECT_FALSE(ParseCapMask("0x1f"));
  EXPECT_FALSE(ParseCapMask("00000000000000001"));  // 17 digits
  EXPECT_FALSE(ParseCapMask("ffff ffff"));
}

TEST(PrivilegesParseTest, ThreadStatusGivesSetsIdsAndNoNewPrivs) {
  auto caps = ParseThreadStatus(
      "Name:\tkpulse\nUmask:\t0077\nState:\tS (sleeping)\n"
      "Uid:\t65534\t65534\t65534\t65534\nGid:\t65533\t65533\t65533\t65534\n"
      "Groups:\t65533 \nCapInh:\t0000000000000000\nCapPrm:\t000000c000000004\n"
      "CapEff:\t000000c000000000\nCapBnd:\t000000c000000004\nCapAmb:\t0000000000000001\n"
      "NoNewPrivs:\t1\nSeccomp:\t2\n");
  ASSERT_TRUE(caps);
  EXPECT_EQ(caps->inh, 0u);
  EXPECT_EQ(caps->prm, 0xc000000004ULL);
  EXPECT_EQ(caps->eff, 0xc000000000ULL);
  EXPECT_EQ(caps->bnd, 0xc000000004ULL);
  EXPECT_EQ(caps->amb, 1u);
  EXPECT_TRUE(caps->no_new_privs);
  EXPECT_EQ(caps->uids, (std::array<uid_t, 4>{65534, 65534, 65534, 65534}));
  EXPECT_EQ(caps->gids, (std::array<gid_t, 4>{65533, 65533, 65533, 65534}));
}

TEST(PrivilegesParseTest, ThreadStatusWithoutAmbientLineIsRejected) {
  EXPECT_FALSE(ParseThreadStatus(
      "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n"
      "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n"
      "NoNewPrivs:\t0\n"));
}

TEST(PrivilegesParseTest, ThreadStatusWithBadMaskIsRejected) {
  EXPECT_FALSE(
      ParseThreadStatus("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\n"
                        "CapPrm:\tzz\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n"
                        "CapAmb:\t0000000000000000\nNoNewPrivs:\t0\n"));
}

TEST(PrivilegesParseTest, ReadThreadCapsListsEveryThreadOfThisProcess) {
  std::promise<void> stop;
  std::shared_future<void> stopped = stop.get_future().share();
  std::promise<pid_t> started;
  std::thread thread([&] {
    started.set_value(gettid());
    stopped.wait();
  });
  pid_t tid = started.get_future().get();
  auto threads = ReadThreadCaps(0);
  stop.set_value();
  thread.join();
  ASSERT_TRUE(threads) << threads.error().message;
  bool main_seen = false, thread_seen = false;
  for (const ThreadCaps& t : *threads) {
    main_seen |= t.tid == getpid();
    thread_seen |= t.tid == tid;
    EXPECT_EQ(t.uids[1], geteuid());
  }
  EXPECT_TRUE(main_seen);
  EXPECT_TRUE(thread_seen);
}

TEST(PrivilegesPlanTest, CapMaskAndNames) {
  EXPECT_EQ(CapMask({CAP_BPF, CAP_PERFMON}), (uint64_t{1} << 39) | (uint64_t{1} << 38));
  EXPECT_EQ(CapNames({CAP_PERFMON, CAP_BPF}), "cap_perfmon,cap_bpf");
  EXPECT_EQ(CapNames({}), "none");
}

TEST(PrivilegesPlanTest, NothingNeededKeepsNothing) {
  PrivilegePlan plan = PlanPrivileges({});
  EXPECT_TRUE(plan.keep.empty());
  EXPECT_TRUE(plan.user.empty());
}

TEST(PrivilegesPlanTest, FileHandlesKeepDacReadSearchOnly) {
  PrivilegePlan plan = PlanPrivileges({.cgroup_file_handles = true, .user = "kpulse"});
  EXPECT_EQ(plan.keep, (std::vector<cap_value_t>{CAP_DAC_READ_SEARCH}));
  EXPECT_EQ(plan.user, "kpulse");
}

TEST(PrivilegesPlanTest, ReloadAttachKeepsBpfAndPerfmonWithoutSysResource) {
  PrivilegePlan plan =
      PlanPrivileges({.cgroup_file_handles = true, .reload_attach = true, .user = ""});
  EXPECT_EQ(plan.keep, (std::vector<cap_value_t>{CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_BPF}));
}

TEST(PrivilegesPlanTest, UserStackSymbolizationKeepsPtraceButNotSyslog) {
  PrivilegePlan plan = PlanPrivileges({.symbolize_user_stacks = true, .user = ""});
  EXPECT_EQ(plan.keep, (std::vector<cap_value_t>{CAP_SYS_PTRACE}));
}

// The drop tests: each in a forked child; the test process must keep its own capabilities.
class PrivilegesDropTest : public testing::Test {
 protected:
  void SetUp() override {
    auto threads = ReadThreadCaps(0);
    ASSERT_TRUE(threads) << threads.error().message;
    before_ = threads->front();
  }
  void TearDown() override {
    auto threads = ReadThreadCaps(0);
    ASSERT_TRUE(threads) << threads.error().message;
    EXPECT_EQ(threads->front().eff, before_.eff) << "the test process lost capabilities";
    EXPECT_EQ(threads->front().uids, before_.uids);
  }
  ThreadCaps before_;
};

TEST_F(PrivilegesDropTest, LeavesExactlyTheKeptSetAndClearsInheritableAndAmbient) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              // Something to clear: cap_bpf and cap_net_admin inheritable and ambient.
              cap_t caps = cap_get_proc();
              const cap_value_t raise[] = {CAP_BPF, CAP_NET_ADMIN};
              cap_set_flag(caps, CAP_INHERITABLE, 2, raise, CAP_SET);
              int rc = cap_set_proc(caps);
              cap_free(caps);
              if (rc != 0) return std::string("cap_set_proc: ") + std::strerror(errno);
              if (cap_set_ambient(CAP_BPF, CAP_SET) != 0 ||
                  cap_set_ambient(CAP_NET_ADMIN, CAP_SET) != 0) {
                return std::string("cap_set_ambient: ") + std::strerror(errno);
              }
              auto dropped = DropPrivileges(PrivilegePlan{{CAP_PERFMON, CAP_BPF}, ""});
              if (!dropped) return "DropPrivileges: " + dropped.error().message;
              if (CapMask(dropped->kept) != CapMask({CAP_BPF, CAP_PERFMON})) {
                return "kept " + CapNames(dropped->kept);
              }
              if (!dropped->missing.empty()) return "missing " + CapNames(dropped->missing);
              if (!dropped->bounding_narrowed) return std::string("bounding set not narrowed");
              if (dropped->threads_checked != 1) {
                return "checked " + std::to_string(dropped->threads_checked) + " threads";
              }
              return CheckAllThreads({CAP_BPF, CAP_PERFMON});
            }),
            "");
}

TEST_F(PrivilegesDropTest, SwitchesToNobodyKeepingTheKeptCapabilities) {
  REQUIRE_ROOT_FOR_DROP();
  passwd nobody = Nobody();
  ASSERT_NE(nobody.pw_uid, 0u) << "no user nobody";
  EXPECT_EQ(InChild([&] {
              auto dropped = DropPrivileges(PrivilegePlan{{CAP_DAC_READ_SEARCH}, "nobody"});
              if (!dropped) return "DropPrivileges: " + dropped.error().message;
              if (dropped->user != "nobody" || dropped->uid != nobody.pw_uid) {
                return "switched to " + dropped->user + " uid " + std::to_string(dropped->uid);
              }
              auto threads = ReadThreadCaps(0);
              if (!threads) return threads.error().message;
              for (const ThreadCaps& t : *threads) {
                for (uid_t uid : t.uids) {
                  if (uid != nobody.pw_uid) return "uid " + std::to_string(uid);
                }
                for (gid_t gid : t.gids) {
                  if (gid != nobody.pw_gid) return "gid " + std::to_string(gid);
                }
              }
              gid_t groups[64];
              int count = getgroups(64, groups);
              for (int i = 0; i < count; ++i) {
                if (groups[i] == 0) return std::string("still in group root");
              }
              return CheckAllThreads({CAP_DAC_READ_SEARCH});
            }),
            "");
}

TEST_F(PrivilegesDropTest, DroppedDacCapabilitiesDenyARootOnlyFile) {
  REQUIRE_ROOT_FOR_DROP();
  std::string path = testing::TempDir() + "kpulse-priv-secret-" + std::to_string(getpid());
  { std::ofstream(path) << "secret\n"; }
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  std::string failure = InChild([&] {
    if (open(path.c_str(), O_RDONLY | O_CLOEXEC) < 0) {
      return "before the drop: " + std::string(std::strerror(errno));
    }
    std::string drop = Drop({CAP_BPF}, "nobody");
    if (!drop.empty()) return drop;
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) return std::string("a 0600 root file opened after the drop");
    if (errno != EACCES) return "open failed with " + std::string(std::strerror(errno));
    return std::string();
  });
  unlink(path.c_str());
  EXPECT_EQ(failure, "");
}

// name_to_handle_at on the cgroup2 mount (from /proc/self/mountinfo); open_by_handle_at after
// dropping to nobody keeping `keep`: 0 or errno.
std::string OpenCgroupByHandleAfterDrop(const std::vector<cap_value_t>& keep, int expect_errno) {
  auto mount = FindCgroup2Mount();
  if (!mount) return "no cgroup2 mount in /proc/self/mountinfo";
  return InChild([&] {
    alignas(file_handle) unsigned char storage[sizeof(file_handle) + MAX_HANDLE_SZ] = {};
    auto* handle = new (storage) file_handle{};
    handle->handle_bytes = MAX_HANDLE_SZ;
    int mount_id = 0;
    if (name_to_handle_at(AT_FDCWD, mount->c_str(), handle, &mount_id, 0) != 0) {
      return "name_to_handle_at " + *mount + ": " + std::strerror(errno);
    }
    int mount_fd = open(mount->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) return "open " + *mount + ": " + std::strerror(errno);
    std::string drop = Drop(keep, "nobody");
    if (!drop.empty()) return drop;
    int fd = open_by_handle_at(mount_fd, handle, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int error = fd < 0 ? errno : 0;
    if (error != expect_errno) {
      return "open_by_handle_at " + *mount + ": " + (error ? std::strerror(error) : "opened") +
             ", expected " + (expect_errno ? std::strerror(expect_errno) : "success");
    }
    return std::string();
  });
}

TEST_F(PrivilegesDropTest, KeptDacReadSearchOpensTheCgroupRootByHandle) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(OpenCgroupByHandleAfterDrop({CAP_DAC_READ_SEARCH}, 0), "");
}

TEST_F(PrivilegesDropTest, DroppedDacReadSearchCannotOpenByHandle) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(OpenCgroupByHandleAfterDrop({CAP_BPF}, EPERM), "");
}

TEST_F(PrivilegesDropTest, KeptCapBpfCreatesMapsAsNobody) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              std::string drop = Drop({CAP_BPF}, "nobody");
              if (!drop.empty()) return drop;
              int rc = CreateArrayMap();
              return rc == 0 ? std::string() : "bpf_map_create: " + std::string(std::strerror(-rc));
            }),
            "");
}

TEST_F(PrivilegesDropTest, DroppedCapBpfCannotCreateMaps) {
  REQUIRE_ROOT_FOR_DROP();
  std::ifstream sysctl("/proc/sys/kernel/unprivileged_bpf_disabled");
  int unprivileged_disabled = -1;
  sysctl >> unprivileged_disabled;
  if (unprivileged_disabled == 0) {
    // Then unprivileged users may create ARRAY maps: the EPERM below would not be expected.
    GTEST_SKIP() << "kernel.unprivileged_bpf_disabled=0 lets anyone create maps";
  }
  EXPECT_EQ(InChild([] {
              std::string drop = Drop({CAP_DAC_READ_SEARCH});
              if (!drop.empty()) return drop;
              int rc = CreateArrayMap();
              if (rc != -EPERM) {
                return "bpf_map_create: " + std::string(rc == 0 ? "created" : std::strerror(-rc)) +
                       ", expected EPERM";
              }
              return std::string();
            }),
            "");
}

// Finding for the plan: on 5.11+ BPF memory is charged to the memory cgroup, so neither
// RLIMIT_MEMLOCK nor CAP_SYS_RESOURCE (to raise it) is needed to create maps.
TEST_F(PrivilegesDropTest, MapsNeedNeitherMemlockRlimitNorSysResource) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              rlimit none{0, 0};
              if (setrlimit(RLIMIT_MEMLOCK, &none) != 0) {
                return "setrlimit: " + std::string(std::strerror(errno));
              }
              std::string drop = Drop({CAP_BPF});
              if (!drop.empty()) return drop;
              if (CapMask({CAP_SYS_RESOURCE}) & ReadThreadCaps(0)->front().eff) {
                return std::string("cap_sys_resource still effective");
              }
              int rc = CreateArrayMap(4096, 1024);  // 4 MiB of values, RLIMIT_MEMLOCK 0
              return rc == 0 ? std::string() : "bpf_map_create: " + std::string(std::strerror(-rc));
            }),
            "");
}

TEST_F(PrivilegesDropTest, SelfCheckFailsWhenThreadsStartedBeforeTheDrop) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(
      InChild([] {
        std::promise<void> stop;
        std::shared_future<void> stopped = stop.get_future().share();
        std::vector<std::thread> early;
        for (int i = 0; i < 2; ++i) early.emplace_back([stopped] { stopped.wait(); });
        auto dropped = DropPrivileges(PrivilegePlan{{CAP_BPF}, ""});
        std::string failure;
        if (dropped) {
          failure = "DropPrivileges succeeded with two threads holding every capability";
        } else if (dropped.error().message.find("kept more than the plan") == std::string::npos) {
          failure = "unexpected error: " + dropped.error().message;
        } else if (CheckAllThreads({CAP_BPF}).empty()) {
          failure = "every thread is dropped, so why did the check fail?";
        }
        stop.set_value();
        for (auto& thread : early) thread.join();
        return failure;
      }),
      "");
}

// The service-user case: running as nobody with only some capabilities (as systemd's User= plus
// AmbientCapabilities= gives them) and no CAP_SETPCAP/CAP_SETUID.
TEST_F(PrivilegesDropTest, AsAServiceUserDropsWhatItHasAndKeepingMissingCapsIsNotAnError) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              std::string drop = Drop({CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH}, "nobody");
              if (!drop.empty()) return "setting up the service user: " + drop;
              auto dropped =
                  DropPrivileges(PrivilegePlan{{CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE}, "nobody"});
              if (!dropped) return "DropPrivileges: " + dropped.error().message;
              if (CapMask(dropped->kept) != CapMask({CAP_BPF, CAP_PERFMON})) {
                return "kept " + CapNames(dropped->kept);
              }
              if (dropped->missing != std::vector<cap_value_t>{CAP_SYS_PTRACE}) {
                return "missing " + CapNames(dropped->missing);
              }
              if (dropped->bounding_narrowed) {
                return std::string("bounding set narrowed without cap_setpcap?");
              }
              std::string failure = CheckAllThreads({CAP_BPF, CAP_PERFMON}, false);
              if (!failure.empty()) return failure;
              // The bounding set is the one the first drop left (no cap_setpcap to narrow it).
              if (ReadThreadCaps(0)->front().bnd !=
                  CapMask({CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH})) {
                return std::string("bounding set changed");
              }
              return std::string();
            }),
            "");
}

TEST_F(PrivilegesDropTest, SwitchingUserWithoutSetuidCapabilitiesFailsWithErrno) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              std::string drop = Drop({}, "nobody");
              if (!drop.empty()) return drop;
              auto dropped = DropPrivileges(PrivilegePlan{{}, "root"});
              if (dropped) return std::string("switched back to root");
              if (dropped.error().error != EPERM ||
                  dropped.error().message.find("cap_setgroups") == std::string::npos) {
                return "unexpected error: " + dropped.error().message;
              }
              return std::string();
            }),
            "");
}

TEST_F(PrivilegesDropTest, UnknownUserFailsBeforeChangingAnything) {
  REQUIRE_ROOT_FOR_DROP();
  EXPECT_EQ(InChild([] {
              auto dropped = DropPrivileges(PrivilegePlan{{}, "kpulse-no-such-user"});
              if (dropped) return std::string("dropped to an unknown user");
              if (dropped.error().error != ENOENT) return dropped.error().message;
              auto threads = ReadThreadCaps(0);
              if (!threads || threads->front().no_new_privs || threads->front().eff == 0) {
                return std::string("privileges changed before the user lookup failed");
              }
              return std::string();
            }),
            "");
}

}  // namespace
}  // namespace kpulse
