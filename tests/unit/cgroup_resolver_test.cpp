#include "cgroup/cgroup_resolver.h"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace kpulse {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A fresh directory under the test temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = testing::TempDir() + "kpulse-cgroup-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

  std::string Write(const std::string& name, const std::string& text) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::string path_;
};

uint64_t InodeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path << ": " << std::strerror(errno);
  return st.st_ino;
}

// ---- FindCgroup2Mount ------------------------------------------------------------------------

// Lines as this Debian 12 VM prints them (hybrid: v1 controllers on a tmpfs, v2 under unified).
constexpr const char* kHybridMountinfo =
    "22 1 254:1 / / rw,relatime - ext4 /dev/vda rw\n"
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(CgroupMountTest, FindsHybridLayoutUnderUnified) {
  TempDir dir;
  EXPECT_EQ(FindCgroup2Mount(dir.Write("mountinfo", kHybridMountinfo)), "/sys/fs/cgroup/unified");
}

TEST(CgroupMountTest, FindsUnifiedLayoutAtSysFsCgroup) {
  TempDir dir;
  const std::string path = dir.Write(
      "mountinfo",
      "23 29 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
      "26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n");
  EXPECT_EQ(FindCgroup2Mount(path), "/sys/fs/cgroup");
}

TEST(CgroupMountTest, NoCgroup2MountGivesNullopt) {
  TempDir dir;
  const std::string path =
      dir.Write("mountinfo",
                "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n");
  EXPECT_EQ(FindCgroup2Mount(path), std::nullopt);
}

TEST(CgroupMountTest, MissingFileGivesNullopt) {
  TempDir dir;
  EXPECT_EQ(FindCgroup2Mount(dir.path() + "/no-such-mountinfo"), std::nullopt);
}

TEST(CgroupMountTest, UnescapesSpaceInMountPoint) {
  TempDir dir;
  const std::string path =
      dir.Write("mountinfo", "50 22 0:40 / /mnt/my\\040cgroups rw - cgroup2 none rw\n");
  EXPECT_EQ(FindCgroup2Mount(path), "/mnt/my cgroups");
}

TEST(CgroupMountTest, TypeIsReadAfterTheSeparatorNotFromTheSource) {
  TempDir dir;
  // Optional fields shift the separator; the source field "cgroup2" is not the type.
  const std::string path =
      dir.Write("mountinfo", "60 22 0:41 / /mnt/decoy rw shared:9 master:2 - tmpfs cgroup2 rw\n");
  EXPECT_EQ(FindCgroup2Mount(path), std::nullopt);
}

TEST(CgroupMountTest, PrefersWholeHierarchyOverBindMountedSubtree) {
  TempDir dir;
  const std::string path =
      dir.Write("mountinfo",
                "70 22 0:38 /system.slice /srv/slice rw - cgroup2 cgroup2 rw\n"
                "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
  EXPECT_EQ(FindCgroup2Mount(path), "/sys/fs/cgroup/unified");
}

TEST(CgroupMountTest, RealMountinfoNamesADirectoryWithCgroupProcs) {
  const std::optional<std::string> root = FindCgroup2Mount();
  ASSERT_TRUE(root.has_value()) << "no cgroup2 mount in /proc/self/mountinfo";
  EXPECT_TRUE(fs::is_directory(*root));
  EXPECT_TRUE(fs::exists(*root + "/cgroup.procs")) << *root;
}

// ---- Resolution by directory walk (any user, plain directories) ------------------------------

class CgroupWalkTest : public testing::Test {
 protected:
  void SetUp() override { fs::create_directories(tree_.path() + "/a/b/c"); }

  std::string Path(const std::string& relative) const { return tree_.path() + relative; }

  TempDir tree_;
};

TEST_F(CgroupWalkTest, DoesNotUseFileHandlesOutsideKernfs) {
  CgroupResolver resolver(tree_.path());
  EXPECT_FALSE(resolver.uses_file_handles());
}

TEST_F(CgroupWalkTest, ResolvesNestedDirectory) {
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a/b"))), "/a/b");
}

TEST_F(CgroupWalkTest, ResolvesRootToSlash) {
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.PathOf(InodeOf(tree_.path())), "/");
}

TEST_F(CgroupWalkTest, RootIsReturnedAsGiven) {
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.root(), tree_.path());
}

TEST_F(CgroupWalkTest, RemovedDirectoryStopsResolving) {
  CgroupResolver resolver(tree_.path());
  const uint64_t id = InodeOf(Path("/a/b/c"));
  ASSERT_EQ(resolver.PathOf(id), "/a/b/c");  // Now cached.
  ASSERT_EQ(rmdir(Path("/a/b/c").c_str()), 0);
  EXPECT_EQ(resolver.PathOf(id), std::nullopt);
}

TEST_F(CgroupWalkTest, UnknownIdGivesNullopt) {
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.PathOf(InodeOf(testing::TempDir())), std::nullopt);  // Outside the tree.
  EXPECT_EQ(resolver.PathOf(0), std::nullopt);
}

TEST_F(CgroupWalkTest, RegularFilesAreNotCgroups) {
  const std::string file = Path("/a/cgroup.procs");
  std::ofstream(file) << "";
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.PathOf(InodeOf(file)), std::nullopt);
}

TEST_F(CgroupWalkTest, NamesAreReturnedRawForTheSanitizer) {
  const std::string name = "/odd \"name\"\xFF";
  ASSERT_TRUE(fs::create_directory(Path(name)));
  CgroupResolver resolver(tree_.path());
  EXPECT_EQ(resolver.PathOf(InodeOf(Path(name))), name);
}

TEST_F(CgroupWalkTest, RenamedDirectoryResolvesToItsNewPath) {
  CgroupResolver resolver(tree_.path(), {.min_rescan_interval = 0ms});
  const uint64_t id = InodeOf(Path("/a/b"));
  ASSERT_EQ(resolver.PathOf(id), "/a/b");
  fs::rename(Path("/a"), Path("/z"));
  EXPECT_EQ(resolver.PathOf(id), "/z/b");
}

TEST_F(CgroupWalkTest, NewDirectoryIsFoundByARescan) {
  CgroupResolver resolver(tree_.path(), {.min_rescan_interval = 0ms});
  ASSERT_EQ(resolver.PathOf(InodeOf(Path("/a"))), "/a");  // First walk.
  ASSERT_TRUE(fs::create_directory(Path("/a/new")));
  EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a/new"))), "/a/new");
}

TEST_F(CgroupWalkTest, RescansOnMissAreRateLimited) {
  CgroupResolver resolver(tree_.path(), {.min_rescan_interval = 1h});
  ASSERT_EQ(resolver.PathOf(InodeOf(Path("/a"))), "/a");  // First walk.
  ASSERT_TRUE(fs::create_directory(Path("/a/new")));
  EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a/new"))), std::nullopt);  // Too soon to walk again.
}

TEST_F(CgroupWalkTest, ResolvesEverythingWithATinyCache) {
  CgroupResolver resolver(tree_.path(), {.max_cached = 1});
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a"))), "/a");
    EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a/b"))), "/a/b");
    EXPECT_EQ(resolver.PathOf(InodeOf(Path("/a/b/c"))), "/a/b/c");
  }
}

TEST_F(CgroupWalkTest, ConcurrentLookupsAgree) {
  CgroupResolver resolver(tree_.path());
  const uint64_t b = InodeOf(Path("/a/b"));
  const uint64_t c = InodeOf(Path("/a/b/c"));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        if (resolver.PathOf(b) != "/a/b" || resolver.PathOf(c) != "/a/b/c") ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(CgroupResolverTest, MissingRootThrowsSystemError) {
  EXPECT_THROW(CgroupResolver("/nonexistent/kpulse-cgroup-root"), std::system_error);
}

// ---- The real cgroup2 hierarchy (root only) --------------------------------------------------

// A uniquely named child cgroup of the real cgroup2 root, removed on destruction.
class ScratchCgroup {
 public:
  explicit ScratchCgroup(const std::string& root) {
    static std::atomic<int> counter{0};
    name_ = "kpulse-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    path_ = root + "/" + name_;
    if (mkdir(path_.c_str(), 0755) != 0) {
      ADD_FAILURE() << "mkdir " << path_ << ": " << std::strerror(errno);
      removed_ = true;
    }
  }
  ~ScratchCgroup() { Remove(); }
  ScratchCgroup(const ScratchCgroup&) = delete;
  ScratchCgroup& operator=(const ScratchCgroup&) = delete;

  bool Remove() {
    if (removed_) return true;
    removed_ = rmdir(path_.c_str()) == 0;
    return removed_;
  }
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }

 private:
  std::string name_;
  std::string path_;
  bool removed_ = false;
};

class CgroupRealTest : public testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      const char* ci = std::getenv("CI");
      if (ci != nullptr && std::string(ci) == "true") {
        FAIL() << "CI=true: the real-cgroup tests must run as root";
      }
      GTEST_SKIP() << "needs root to create cgroups";
    }
    std::optional<std::string> root = FindCgroup2Mount();
    ASSERT_TRUE(root.has_value()) << "no cgroup2 mount in /proc/self/mountinfo";
    root_ = *root;
  }

  std::string root_;
};

TEST_F(CgroupRealTest, ResolvesNewCgroupByFileHandle) {
  CgroupResolver resolver(root_);
  EXPECT_TRUE(resolver.uses_file_handles());
  ScratchCgroup cgroup(root_);
  EXPECT_EQ(resolver.PathOf(InodeOf(cgroup.path())), "/" + cgroup.name());
}

TEST_F(CgroupRealTest, RemovedCgroupStopsResolving) {
  CgroupResolver resolver(root_);
  ScratchCgroup cgroup(root_);
  const uint64_t id = InodeOf(cgroup.path());
  ASSERT_EQ(resolver.PathOf(id), "/" + cgroup.name());  // Now cached.
  ASSERT_TRUE(cgroup.Remove()) << std::strerror(errno);
  EXPECT_EQ(resolver.PathOf(id), std::nullopt);
  EXPECT_TRUE(resolver.uses_file_handles());  // ESTALE means "gone", not "unsupported".
}

TEST_F(CgroupRealTest, RootIdResolvesToSlash) {
  CgroupResolver resolver(root_);
  EXPECT_EQ(resolver.PathOf(InodeOf(root_)), "/");
}

TEST_F(CgroupRealTest, WalkAloneResolvesAndForgetsCgroups) {
  CgroupResolver resolver(root_, {.use_file_handles = false, .min_rescan_interval = 0ms});
  ScratchCgroup cgroup(root_);
  const uint64_t id = InodeOf(cgroup.path());
  ASSERT_EQ(resolver.PathOf(id), "/" + cgroup.name());
  ASSERT_TRUE(cgroup.Remove()) << std::strerror(errno);
  EXPECT_EQ(resolver.PathOf(id), std::nullopt);
}

// Clears CAP_DAC_READ_SEARCH from the calling thread's effective set (capabilities are per thread).
bool DropDacReadSearchInThisThread() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  data[CAP_TO_INDEX(CAP_DAC_READ_SEARCH)].effective &= ~CAP_TO_MASK(CAP_DAC_READ_SEARCH);
  return syscall(SYS_capset, &header, data) == 0;
}

TEST_F(CgroupRealTest, FallsBackToWalkWhenPrivilegeIsDropped) {
  CgroupResolver resolver(root_);
  ASSERT_TRUE(resolver.uses_file_handles());
  ScratchCgroup cgroup(root_);
  std::optional<std::string> path;
  bool dropped = false;
  std::thread([&] {
    dropped = DropDacReadSearchInThisThread();
    if (dropped) path = resolver.PathOf(InodeOf(cgroup.path()));
  }).join();
  ASSERT_TRUE(dropped) << "capset failed";
  EXPECT_EQ(path, "/" + cgroup.name());
  EXPECT_FALSE(resolver.uses_file_handles());
}

}  // namespace
}  // namespace kpulse
