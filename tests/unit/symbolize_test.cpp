#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "symbolize/kernel_symbols.h"
#include "symbolize/user_symbols.h"

// Symbols the user-space tests look for in this very binary. External linkage, not inlined, and
// address-taken, so each has its own entry in .symtab. The volatile store gives each a body of
// several bytes, so start + 1 and + 2 still lie inside.
volatile int kpulse_symbolize_test_sink = 0;

extern "C" __attribute__((noinline)) void kpulse_symbolize_test_marker() {
  kpulse_symbolize_test_sink = kpulse_symbolize_test_sink + 1;
}

namespace kpulse::symbolize_test {
__attribute__((noinline)) int CxxMarker(int value);
__attribute__((noinline)) int CxxMarker(int value) {
  kpulse_symbolize_test_sink = value;
  return value + 1;
}
}  // namespace kpulse::symbolize_test

namespace kpulse {
namespace {

namespace fs = std::filesystem;

constexpr const char* kUnknown = "[unknown]";

uint64_t AddressOf(void (*function)()) { return reinterpret_cast<uint64_t>(function); }
uint64_t MarkerAddress() { return AddressOf(&kpulse_symbolize_test_marker) + 1; }
uint64_t GetpidAddress() { return reinterpret_cast<uint64_t>(&getpid) + 1; }

// A file under the test temp dir, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    std::string pattern = testing::TempDir() + "kpulse-kallsyms-XXXXXX";
    const int fd = mkstemp(pattern.data());
    if (fd < 0) {
      ADD_FAILURE() << "mkstemp: " << std::strerror(errno);
    } else {
      close(fd);
    }
    path_ = pattern;
    std::ofstream(path_) << text;
  }
  ~TempFile() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// KernelSymbols on a fixture file: unsorted, aliases, a module, data and absolute symbols.

constexpr const char* kFixture =
    "ffffffff81002000 t helper_b\n"
    "ffffffff81000000 T _stext\n"
    "ffffffff81001000 t __local_alias\n"
    "ffffffff81001000 T do_nanosleep\n"
    "ffffffff81003000 T _etext\n"
    "ffffffffc0001000 t foo\t[mod]\n"
    "ffffffffc0001100 T bar\t[mod]\n"
    "ffffffff82000000 D some_data\n"
    "ffffffff82000100 T after_data\n"
    "0000000000000000 A fixed_percpu_data\n";

class KernelSymbolsFixtureTest : public testing::Test {
 protected:
  void SetUp() override {
    symbols_ = KernelSymbols::Load(file_.path());
    ASSERT_NE(symbols_, nullptr);
  }

  TempFile file_{kFixture};
  std::unique_ptr<KernelSymbols> symbols_;
};

TEST_F(KernelSymbolsFixtureTest, ResolvesAddressInsideFunction) {
  EXPECT_EQ(symbols_->Resolve(0xffffffff81002345), "helper_b");
}

TEST_F(KernelSymbolsFixtureTest, ResolvesExactStart) {
  EXPECT_EQ(symbols_->Resolve(0xffffffff81000000), "_stext");
  EXPECT_EQ(symbols_->Resolve(0xffffffff81002000), "helper_b");
}

TEST_F(KernelSymbolsFixtureTest, AddressBeforeFirstSymbolIsUnknown) {
  EXPECT_EQ(symbols_->Resolve(0xffffffff80ffffff), kUnknown);
  EXPECT_EQ(symbols_->Resolve(0x10), kUnknown);  // The absolute symbol at 0 is no function.
}

TEST_F(KernelSymbolsFixtureTest, GlobalSymbolWinsOverLocalAliasAtSameAddress) {
  EXPECT_EQ(symbols_->Resolve(0xffffffff81001008), "do_nanosleep");
}

TEST_F(KernelSymbolsFixtureTest, ModuleSymbolNamesItsModule) {
  EXPECT_EQ(symbols_->Resolve(0xffffffffc0001004), "foo [mod]");
  EXPECT_EQ(symbols_->Resolve(0xffffffffc0001100), "bar [mod]");
}

TEST_F(KernelSymbolsFixtureTest, EndOfTextAndDataSymbolsBoundFunctions) {
  EXPECT_EQ(symbols_->Resolve(0xffffffff81003010), kUnknown);  // Past _etext.
  EXPECT_EQ(symbols_->Resolve(0xffffffff82000010), kUnknown);  // In some_data.
  EXPECT_EQ(symbols_->Resolve(0xffffffff82000110), "after_data");
}

TEST_F(KernelSymbolsFixtureTest, SizeCountsFunctionsOnce) {
  // _stext, do_nanosleep, helper_b, foo, bar, after_data: the alias, _etext, data and absolute
  // symbols do not count.
  EXPECT_EQ(symbols_->size(), 6u);
}

TEST(KernelSymbolsLoadTest, AllZeroAddressesLoadNothing) {
  const TempFile file(
      "0000000000000000 T _stext\n"
      "0000000000000000 T schedule\n"
      "0000000000000000 t foo\t[mod]\n");
  EXPECT_EQ(KernelSymbols::Load(file.path()), nullptr);
}

TEST(KernelSymbolsLoadTest, MissingFileLoadsNothing) {
  EXPECT_EQ(KernelSymbols::Load(testing::TempDir() + "kpulse-no-such-kallsyms"), nullptr);
}

TEST(KernelSymbolsLoadTest, FileWithoutFunctionsLoadsNothing) {
  const TempFile file("ffffffff82000000 D some_data\nnot a symbol line\n");
  EXPECT_EQ(KernelSymbols::Load(file.path()), nullptr);
}

// ---------------------------------------------------------------------------------------------
// KernelSymbols on the running kernel.

TEST(KernelSymbolsRealTest, ResolvesScheduleFromProcKallsyms) {
  if (geteuid() != 0) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL() << "CI=true: reading kernel addresses from /proc/kallsyms needs root";
    }
    GTEST_SKIP() << "needs root: /proc/kallsyms shows zero addresses to others";
  }
  uint64_t schedule = 0;
  std::ifstream in("/proc/kallsyms");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string address;
    std::string type;
    std::string name;
    fields >> address >> type >> name;
    if (name == "schedule" && (type == "T" || type == "t")) {
      schedule = std::stoull(address, nullptr, 16);
      break;
    }
  }
  ASSERT_NE(schedule, 0u) << "no nonzero 'schedule' in /proc/kallsyms (kptr_restrict?)";

  const std::unique_ptr<KernelSymbols> symbols = KernelSymbols::Load();
  ASSERT_NE(symbols, nullptr);
  EXPECT_GT(symbols->size(), 1000u);
  EXPECT_EQ(symbols->Resolve(schedule), "schedule");
  EXPECT_EQ(symbols->Resolve(schedule + 1), "schedule");
}

// ---------------------------------------------------------------------------------------------
// UserSymbolizer on this process and a child of it.

TEST(UserSymbolizerTest, ResolvesFunctionOfThisExecutable) {
  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.Resolve(getpid(), {MarkerAddress()}),
            std::vector<std::string>{"kpulse_symbolize_test_marker"});
}

TEST(UserSymbolizerTest, ResolvesExactFunctionStart) {
  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.Resolve(getpid(), {AddressOf(&kpulse_symbolize_test_marker)}),
            std::vector<std::string>{"kpulse_symbolize_test_marker"});
}

TEST(UserSymbolizerTest, ResolvesLibcFunctionFromDynsym) {
  UserSymbolizer symbolizer;
  const std::vector<std::string> names = symbolizer.Resolve(getpid(), {GetpidAddress()});
  ASSERT_EQ(names.size(), 1u);
  EXPECT_NE(names[0].find("getpid"), std::string::npos) << names[0];
}

TEST(UserSymbolizerTest, DemanglesCxxFunction) {
  UserSymbolizer symbolizer;
  const uint64_t address = reinterpret_cast<uint64_t>(&symbolize_test::CxxMarker) + 1;
  EXPECT_EQ(symbolizer.Resolve(getpid(), {address}),
            std::vector<std::string>{"kpulse::symbolize_test::CxxMarker(int)"});
}

TEST(UserSymbolizerTest, AddressOutsideAnyMappingIsUnknown) {
  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.Resolve(getpid(), {8}), std::vector<std::string>{kUnknown});
}

TEST(UserSymbolizerTest, AddressInDataIsUnknown) {
  static int data_in_this_binary = 1;
  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.Resolve(getpid(), {reinterpret_cast<uint64_t>(&data_in_this_binary)}),
            std::vector<std::string>{kUnknown});
}

TEST(UserSymbolizerTest, ResolvesEachAddressInOrder) {
  UserSymbolizer symbolizer;
  const std::vector<std::string> names =
      symbolizer.Resolve(getpid(), {MarkerAddress(), 8, GetpidAddress(), MarkerAddress()});
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[0], "kpulse_symbolize_test_marker");
  EXPECT_EQ(names[1], kUnknown);
  EXPECT_NE(names[2].find("getpid"), std::string::npos) << names[2];
  EXPECT_EQ(names[3], "kpulse_symbolize_test_marker");
}

TEST(UserSymbolizerTest, EmptyRequestGivesEmptyAnswer) {
  UserSymbolizer symbolizer;
  EXPECT_TRUE(symbolizer.Resolve(getpid(), {}).empty());
}

TEST(UserSymbolizerTest, GoneProcessIsAllUnknown) {
  const pid_t child = fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) _exit(0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // Reaped: the pid no longer exists.

  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.Resolve(child, {MarkerAddress(), GetpidAddress()}),
            (std::vector<std::string>{kUnknown, kUnknown}));
  EXPECT_EQ(symbolizer.Resolve(-1, {MarkerAddress()}), std::vector<std::string>{kUnknown});
}

// A forked child that waits in pause() until killed; killed and reaped on destruction.
class PausedChild {
 public:
  PausedChild() {
    pid_ = fork();
    if (pid_ == 0) {
      for (;;) pause();
    }
  }
  ~PausedChild() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  PausedChild(const PausedChild&) = delete;
  PausedChild& operator=(const PausedChild&) = delete;

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

TEST(UserSymbolizerTest, ResolvesAnotherProcessByPid) {
  const PausedChild child;
  ASSERT_GT(child.pid(), 0) << std::strerror(errno);
  UserSymbolizer symbolizer;
  const std::vector<std::string> names =
      symbolizer.Resolve(child.pid(), {MarkerAddress(), GetpidAddress()});
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0], "kpulse_symbolize_test_marker");
  EXPECT_NE(names[1].find("getpid"), std::string::npos) << names[1];
}

TEST(UserSymbolizerCacheTest, ReadsEachFileOnce) {
  UserSymbolizer symbolizer;
  EXPECT_EQ(symbolizer.elf_loads(), 0u);
  symbolizer.Resolve(getpid(), {MarkerAddress()});
  EXPECT_EQ(symbolizer.elf_loads(), 1u);
  symbolizer.Resolve(getpid(), {MarkerAddress(), MarkerAddress() + 1});
  EXPECT_EQ(symbolizer.elf_loads(), 1u);
  symbolizer.Resolve(getpid(), {GetpidAddress()});  // libc: a second file.
  EXPECT_EQ(symbolizer.elf_loads(), 2u);
  EXPECT_EQ(symbolizer.cached_files(), 2u);
}

TEST(UserSymbolizerCacheTest, SameFileInAnotherProcessIsACacheHit) {
  UserSymbolizer symbolizer;
  symbolizer.Resolve(getpid(), {MarkerAddress()});
  const PausedChild child;
  ASSERT_GT(child.pid(), 0) << std::strerror(errno);
  EXPECT_EQ(symbolizer.Resolve(child.pid(), {MarkerAddress()}),
            std::vector<std::string>{"kpulse_symbolize_test_marker"});
  EXPECT_EQ(symbolizer.elf_loads(), 1u);
}

TEST(UserSymbolizerCacheTest, EvictsLeastRecentlyUsedFileBeyondBound) {
  UserSymbolizer symbolizer(/*max_cached_files=*/1);
  symbolizer.Resolve(getpid(), {MarkerAddress()});
  symbolizer.Resolve(getpid(), {GetpidAddress()});  // Evicts the executable.
  EXPECT_EQ(symbolizer.cached_files(), 1u);
  EXPECT_EQ(symbolizer.Resolve(getpid(), {MarkerAddress()}),
            std::vector<std::string>{"kpulse_symbolize_test_marker"});
  EXPECT_EQ(symbolizer.elf_loads(), 3u);
}

// ---------------------------------------------------------------------------------------------
// Demangle.

TEST(DemangleTest, DemanglesItaniumName) {
  EXPECT_EQ(Demangle("_ZN6kpulse4TestEv"), "kpulse::Test()");
}

TEST(DemangleTest, PlainNameUnchanged) { EXPECT_EQ(Demangle("main"), "main"); }

TEST(DemangleTest, MalformedMangledNameUnchanged) { EXPECT_EQ(Demangle("_Zfoo"), "_Zfoo"); }

TEST(DemangleTest, CloneSuffixKept) {
  EXPECT_EQ(Demangle("_ZN6kpulse4TestEv.cold"), "kpulse::Test() [clone .cold]");
}

}  // namespace
}  // namespace kpulse
