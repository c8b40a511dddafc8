// The off-CPU probe against the kernel's own per-thread accounting. Blocked time of a thread
// over an interval = wall - on-CPU (schedstat field 1) - run-queue wait (field 2). Every test
// runs once per hook path (sched_info, wakeup), forced by config.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "bpf/sched_probe.h"
#include "collect/offcpu_collector.h"
#include "config/config.h"
#include "debug/offcpu_stacks.h"
#include "sched_test_env.h"
#include "symbolize/kernel_symbols.h"
#include "test_env.h"

// Blocks in a read(2) issued from this very function (raw syscall instruction, no libc
// wrapper), so the innermost user frame of the blocked thread is this function.
extern "C" __attribute__((noinline)) long kpulse_test_blocked_in_known_function(int fd) {
  char byte;
  long result;
  asm volatile("syscall"
               : "=a"(result)
               : "0"(static_cast<long>(SYS_read)), "D"(static_cast<long>(fd)), "S"(&byte), "d"(1L)
               : "rcx", "r11", "memory");
  return result;
}

namespace kpulse {

void PrintTo(SchedHook hook, std::ostream* os);

namespace {

using namespace std::chrono_literals;
using test::CgroupChild;
using test::Delta;
using test::SchedStat;
using test::SumHists;
using test::TestCgroup;
using test::ThreadSchedStat;

uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// A thread's ground truth over its own lifetime: it reads its clock and schedstat when it starts
// running and again just before it exits; blocked = wall - exec - run_delay in between.
class BlockedTruth {
 public:
  BlockedTruth() : wall_(MonotonicNs()), start_(ThreadSchedStat()) {}
  int64_t BlockedNs() const {
    const SchedStat end = ThreadSchedStat();
    const uint64_t wall = MonotonicNs() - wall_;
    return static_cast<int64_t>(wall) - static_cast<int64_t>(end.exec_ns - start_.exec_ns) -
           static_cast<int64_t>(end.run_delay_ns - start_.run_delay_ns);
  }

 private:
  uint64_t wall_;
  SchedStat start_;
};

// The calling process waits in vfork() while the child sleeps 200 ms. No local state lives across
// the vfork (the child shares this stack), and the child makes raw syscalls only.
__attribute__((noinline)) void VforkChildThatSleeps200ms() {
  static const timespec kNap{0, 200000000};
  const pid_t child = vfork();
  if (child == 0) {
    syscall(SYS_nanosleep, &kNap, nullptr);
    _exit(0);
  }
  waitpid(child, nullptr, 0);  // already exited: returns at once
}

sched_hist OffcpuHist(const OffcpuSnapshot& snapshot, uint64_t cgroup_id, uint32_t state) {
  return SumHists(snapshot.hists, [&](const OffcpuKey& key) {
    return key.cgroup_id == cgroup_id && key.state == state;
  });
}

class OffcpuProbeTest : public ::testing::TestWithParam<SchedHook> {
 protected:
  void SetUp() override { KPULSE_REQUIRE_ROOT(); }

  std::unique_ptr<SchedProbe> StartProbe(OffcpuConfig offcpu = {},
                                         size_t hot_histogram_bytes = kDefaultHotHistogramBytes) {
    auto probe = SchedProbe::Start({RunqueueConfig{}, offcpu, GetParam(), hot_histogram_bytes});
    EXPECT_EQ(probe->hook(), ToString(GetParam()));
    return probe;
  }

  static OffcpuSnapshot Snapshot(const SchedProbe& probe) {
    auto snapshot = probe.OffcpuSnapshotNow();
    if (!snapshot) ADD_FAILURE() << snapshot.error();
    return snapshot ? *snapshot : OffcpuSnapshot{};
  }

  void ExpectSleepMatchesTruth(size_t hot_histogram_bytes);
};

// Threads of a child process in a fresh cgroup sleep in three ways (nanosleep, futex wait with a
// timeout, a blocking pipe read fed by another thread), 25 x 20 ms each. Each thread measures its
// own truth over its lifetime and sends it to the test; kpulse's `sleep` total for the cgroup
// must match the sum within 3%. Residual: the truth window is a little wider than the blocks (a
// few us of running at each end), and the wakeup hook stamps at the tracepoints, not at the
// kernel's clock reads.
void OffcpuProbeTest::ExpectSleepMatchesTruth(size_t hot_histogram_bytes) {
  constexpr int kRounds = 25;
  TestCgroup cgroup("off");
  auto probe = StartProbe({}, hot_histogram_bytes);
  const sched_hist before = OffcpuHist(Snapshot(*probe), cgroup.id(), OFFCPU_SLEEP);

  int truth[2];
  ASSERT_EQ(pipe(truth), 0);
  CgroupChild sleepers(cgroup, [&] {
    auto report = [&](const BlockedTruth& t) {
      const int64_t blocked = t.BlockedNs();
      (void)!write(truth[1], &blocked, sizeof(blocked));
    };
    BlockedTruth main_thread;
    int feed[2];
    if (pipe(feed) != 0) return 1;
    uint32_t futex_word = 0;
    std::vector<std::thread> threads;
    threads.emplace_back([&] {  // nanosleep
      BlockedTruth t;
      for (int i = 0; i < kRounds; ++i) std::this_thread::sleep_for(20ms);
      report(t);
    });
    threads.emplace_back([&] {  // futex wait that times out
      BlockedTruth t;
      const timespec timeout{0, 20000000};
      for (int i = 0; i < kRounds; ++i) {
        syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &timeout, nullptr, 0);
      }
      report(t);
    });
    threads.emplace_back([&] {  // blocking pipe read
      BlockedTruth t;
      char byte;
      for (int i = 0; i < kRounds; ++i) {
        if (read(feed[0], &byte, 1) != 1) break;
      }
      report(t);
    });
    threads.emplace_back([&] {  // the feeder
      BlockedTruth t;
      for (int i = 0; i < kRounds; ++i) {
        std::this_thread::sleep_for(20ms);
        (void)!write(feed[1], "x", 1);
      }
      report(t);
    });
    for (auto& thread : threads) thread.join();
    report(main_thread);
    return 0;
  });
  EXPECT_EQ(sleepers.Wait(), 0);
  close(truth[1]);
  int64_t truth_ns = 0, one = 0;
  int reports = 0;
  while (read(truth[0], &one, sizeof(one)) == sizeof(one)) {
    truth_ns += one;
    ++reports;
  }
  close(truth[0]);
  ASSERT_EQ(reports, 5);

  const sched_hist sleep = Delta(OffcpuHist(Snapshot(*probe), cgroup.id(), OFFCPU_SLEEP), before);
  std::printf("%s%s: blocked (sleep) truth %.4f s, kpulse %.4f s over %llu blocks\n",
              std::string(ToString(GetParam())).c_str(),
              hot_histogram_bytes < kDefaultHotHistogramBytes ? " (shared histograms)" : "",
              static_cast<double>(truth_ns) / 1e9, static_cast<double>(sleep.sum_ns) / 1e9,
              static_cast<unsigned long long>(HistCount(sleep)));
  EXPECT_GT(truth_ns, 4 * kRounds * 15'000'000LL) << "four threads blocked ~0.5 s each (setup)";
  EXPECT_NEAR(static_cast<double>(sleep.sum_ns), static_cast<double>(truth_ns),
              0.03 * static_cast<double>(truth_ns));
  EXPECT_GE(HistCount(sleep), static_cast<uint64_t>(4 * kRounds));
}

TEST_P(OffcpuProbeTest, SleepTotalMatchesWallMinusExecMinusRunDelay) {
  ExpectSleepMatchesTruth(kDefaultHotHistogramBytes);
}

// The same in the shared histograms (atomic adds), as for cgroups beyond the per-CPU budget: one
// hot slot, so that the test cgroup is past it (the shared array's offset is exercised too).
TEST_P(OffcpuProbeTest, SharedHistogramsMatchTheTruthToo) {
  ExpectSleepMatchesTruth(test::OneHotSlot(OFFCPU_STATE_MAX * sizeof(sched_hist)));
}

// min_block_us drops shorter blocks from the totals and histograms: 20 ms naps under a 50 ms
// threshold leave nothing, 80 ms naps are all counted.
TEST_P(OffcpuProbeTest, MinBlockThresholdDropsShorterBlocks) {
  TestCgroup cgroup("minblk");
  OffcpuConfig offcpu;
  offcpu.min_block_us = 50000;
  auto probe = StartProbe(offcpu);
  CgroupChild napper(cgroup, [] {
    for (int i = 0; i < 5; ++i) std::this_thread::sleep_for(20ms);
    for (int i = 0; i < 3; ++i) std::this_thread::sleep_for(80ms);
    return 0;
  });
  EXPECT_EQ(napper.Wait(), 0);
  const sched_hist sleep = OffcpuHist(Snapshot(*probe), cgroup.id(), OFFCPU_SLEEP);
  EXPECT_EQ(HistCount(sleep), 3u) << "only the three 80 ms naps";
  EXPECT_GE(sleep.sum_ns, 3 * 80'000'000ULL);
  EXPECT_LT(sleep.sum_ns, 3 * 100'000'000ULL);
}

// The parent of a vfork() child waits in TASK_KILLABLE, which includes the TASK_UNINTERRUPTIBLE
// bit: counted as `disk` (a classification by bits; equality with TASK_UNINTERRUPTIBLE would miss
// it). Truth: the parent's own wall - exec - run_delay around each vfork.
TEST_P(OffcpuProbeTest, VforkParentIsCountedAsDiskByStateBits) {
  constexpr int kRounds = 5;
  TestCgroup cgroup("vfork");
  auto probe = StartProbe();
  const sched_hist before = OffcpuHist(Snapshot(*probe), cgroup.id(), OFFCPU_DISK);
  int truth[2];
  ASSERT_EQ(pipe(truth), 0);
  CgroupChild parent(cgroup, [&] {
    int64_t blocked = 0;
    for (int i = 0; i < kRounds; ++i) {
      BlockedTruth t;
      VforkChildThatSleeps200ms();
      blocked += t.BlockedNs();
    }
    (void)!write(truth[1], &blocked, sizeof(blocked));
    return 0;
  });
  EXPECT_EQ(parent.Wait(), 0);
  int64_t truth_ns = 0;
  ASSERT_EQ(read(truth[0], &truth_ns, sizeof(truth_ns)), static_cast<ssize_t>(sizeof(truth_ns)));
  close(truth[0]);
  close(truth[1]);

  const sched_hist disk = Delta(OffcpuHist(Snapshot(*probe), cgroup.id(), OFFCPU_DISK), before);
  std::printf("%s: vfork parent blocked truth %.4f s, kpulse disk %.4f s\n",
              std::string(ToString(GetParam())).c_str(), static_cast<double>(truth_ns) / 1e9,
              static_cast<double>(disk.sum_ns) / 1e9);
  EXPECT_GT(truth_ns, kRounds * 190'000'000LL);
  EXPECT_NEAR(static_cast<double>(disk.sum_ns), static_cast<double>(truth_ns),
              0.03 * static_cast<double>(truth_ns));
  EXPECT_GE(disk.slots[17], static_cast<uint64_t>(kRounds))
      << "200 ms blocks belong in [134, 268) ms";
}

// With stacks on, a thread blocked in a known function of this binary (built with symbols)
// appears in /debug/offcpu with that function's name, under the cgroup and state filters.
TEST_P(OffcpuProbeTest, DebugEndpointShowsTheFunctionAThreadBlockedIn) {
  TestCgroup cgroup("stk");
  OffcpuConfig offcpu;
  offcpu.stacks.enabled = true;
  offcpu.stacks.user = true;
  offcpu.stacks.min_block_us = 10000;
  auto probe = StartProbe(offcpu);
  int feed[2];
  ASSERT_EQ(pipe(feed), 0);
  CgroupChild blocked(cgroup, [&] {
    for (int i = 0; i < 3; ++i) {
      if (kpulse_test_blocked_in_known_function(feed[0]) != 1) return 1;
    }
    pause();  // alive while its stacks are symbolised (user frames need its mappings)
    return 0;
  });
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(100ms);
    ASSERT_EQ(write(feed[1], "x", 1), 1);
  }
  ASSERT_TRUE(test::WaitAllAsleep(blocked.pid(), 1, 5s));

  OffcpuStacksEndpoint endpoint(
      *probe, true, KernelSymbols::Load(),
      std::make_shared<const CgroupLabeler>([&](uint64_t id) -> std::optional<std::string> {
        if (id == cgroup.id()) return cgroup.path();
        return std::nullopt;
      }));
  const HttpResponse page = endpoint.Render(
      HttpRequest{"GET", "/debug/offcpu", {{"cgroup", cgroup.path()}, {"state", "sleep"}}, false});
  EXPECT_EQ(page.status, 200u);
  EXPECT_THAT(page.body, ::testing::HasSubstr(";kpulse_test_blocked_in_known_function;"))
      << page.body;
  // Kernel frames follow the user frames down to the pipe read (kpulse's own frames and the
  // scheduler's entry are dropped), and a folded line ends in blocked microseconds.
  EXPECT_THAT(page.body, ::testing::ContainsRegex("kpulse_test_blocked_in_known_function;.*"
                                                  "vfs_read;[a-z_]*pipe_read [0-9]+\n"));
  for (const char* probe_frame : {"[bpf]", "__traceiter_", ";__schedule", ";schedule "}) {
    EXPECT_THAT(page.body, ::testing::Not(::testing::HasSubstr(probe_frame)));
  }
  const HttpResponse other_state = endpoint.Render(
      HttpRequest{"GET", "/debug/offcpu", {{"cgroup", cgroup.path()}, {"state", "disk"}}, false});
  EXPECT_THAT(other_state.body,
              ::testing::Not(::testing::HasSubstr("kpulse_test_blocked_in_known_function")));
}

// Stacks on with the defaults (kernel stacks only, min_block_us 10 ms here): in a child, a
// thread naps 40 x 1 ms, then another blocks 3 x ~100 ms in a pipe read, while the main thread
// waits to join each. The blocked time aggregated by stack must be the reader's and the main
// thread's own truth (wall - exec - run_delay, each measured by itself) within 3% (as for the
// totals), and must leave out the naps (40 ms, far beyond 3% of ~500 ms): a kernel stack is
// taken only for blocks above the threshold. No user stack without `user`.
TEST_P(OffcpuProbeTest, StacksCarryTheBlockedTimeOfBlocksAboveTheThreshold) {
  TestCgroup cgroup("stkt");
  OffcpuConfig offcpu;
  offcpu.stacks.enabled = true;
  offcpu.stacks.min_block_us = 10000;
  auto probe = StartProbe(offcpu);
  int feed[2], truth[2];
  ASSERT_EQ(pipe(feed), 0);
  ASSERT_EQ(pipe(truth), 0);
  CgroupChild child(cgroup, [&] {
    BlockedTruth main_thread;  // it only waits: to join the napper, then the reader
    std::thread napper([] {
      for (int i = 0; i < 40; ++i) std::this_thread::sleep_for(1ms);
    });
    napper.join();
    int64_t reader_blocked = 0;
    std::thread reader([&] {
      BlockedTruth t;
      char byte;
      for (int i = 0; i < 3; ++i) {
        if (read(feed[0], &byte, 1) != 1) return;
      }
      reader_blocked = t.BlockedNs();
    });
    reader.join();
    const int64_t blocked = reader_blocked + main_thread.BlockedNs();
    (void)!write(truth[1], &blocked, sizeof(blocked));
    return 0;
  });
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(100ms);
    ASSERT_EQ(write(feed[1], "x", 1), 1);
  }
  int64_t truth_ns = 0;
  ASSERT_EQ(read(truth[0], &truth_ns, sizeof(truth_ns)), static_cast<ssize_t>(sizeof(truth_ns)));
  EXPECT_EQ(child.Wait(), 0);  // its threads' last switch-outs report their blocks

  auto stacks = probe->OffcpuStacksNow();
  ASSERT_TRUE(stacks) << stacks.error();
  uint64_t stacked_ns = 0, blocks = 0;
  for (const auto& stack : *stacks) {
    if (stack.key.cgroup_id != cgroup.id() || stack.key.state != OFFCPU_SLEEP) continue;
    stacked_ns += stack.value.blocked_ns;
    blocks += stack.value.count;
    EXPECT_FALSE(stack.kernel_frames.empty());
    EXPECT_EQ(stack.key.ustack, 0u) << "no user stacks unless stacks.user";
  }
  std::printf("%s: blocked truth %.4f s, by stack %.4f s over %llu blocks\n",
              std::string(ToString(GetParam())).c_str(), static_cast<double>(truth_ns) / 1e9,
              static_cast<double>(stacked_ns) / 1e9, static_cast<unsigned long long>(blocks));
  EXPECT_GT(truth_ns, 400'000'000) << "reader ~250 ms, main thread ~300 ms (setup)";
  EXPECT_NEAR(static_cast<double>(stacked_ns), static_cast<double>(truth_ns),
              0.03 * static_cast<double>(truth_ns));
  EXPECT_EQ(blocks, 5u) << "3 reads and two joins";
}

INSTANTIATE_TEST_SUITE_P(BothHooks, OffcpuProbeTest,
                         ::testing::Values(SchedHook::kSchedInfo, SchedHook::kWakeup),
                         [](const auto& param_info) {
                           return std::string(ToString(param_info.param));
                         });

}  // namespace
}  // namespace kpulse
