// The run-queue latency probe against the kernel's own per-thread accounting:
// /proc/<pid>/task/<tid>/schedstat = "on-CPU ns, run_delay ns, pcount (times switched in)".
// Every test runs once per hook path (sched_info, wakeup), forced by config.
#include <bpf/bpf.h>
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "bpf/sched_probe.h"
#include "collect/bpf_program_collector.h"
#include "collect/runqueue_collector.h"
#include "config/config.h"
#include "sched_test_env.h"
#include "test_env.h"

namespace kpulse {

void PrintTo(SchedHook hook, std::ostream* os) { *os << ToString(hook); }

namespace {

using namespace std::chrono_literals;
using test::CgroupChild;
using test::CgroupHist;
using test::Delta;
using test::PinToCpu;
using test::ProcessSchedStat;
using test::SchedStat;
using test::SpinFor;
using test::SumHists;
using test::TestCgroup;
using test::ThreadSchedStat;
using test::WaitAllAsleep;

class RunqueueProbeTest : public ::testing::TestWithParam<SchedHook> {
 protected:
  void SetUp() override {
    KPULSE_REQUIRE_ROOT();
    cpu_ = static_cast<int>(std::thread::hardware_concurrency()) - 1;
  }

  std::unique_ptr<SchedProbe> StartProbe(RunqueueConfig config = {},
                                         size_t hot_histogram_bytes = kDefaultHotHistogramBytes) {
    // As deployed by default: the off-CPU probe shares the program.
    auto probe = SchedProbe::Start({config, OffcpuConfig{}, GetParam(), hot_histogram_bytes});
    EXPECT_EQ(probe->hook(), ToString(GetParam()));
    return probe;
  }

  static RunqueueSnapshot Snapshot(const SchedProbe& probe) {
    auto snapshot = probe.RunqueueSnapshotNow();
    if (!snapshot) ADD_FAILURE() << snapshot.error();
    return snapshot ? *snapshot : RunqueueSnapshot{};
  }

  void ExpectCgroupMatchesSchedstat(size_t hot_histogram_bytes);

  // A child in `cgroup` with `count` threads pinned to cpu_: each waits for a byte on `go_fd`,
  // spins for `spin`, then sleeps until killed.
  CgroupChild SpinnersOnOneCpu(const TestCgroup& cgroup, int count, int go_fd,
                               std::chrono::milliseconds spin) const {
    const int cpu = cpu_;
    return CgroupChild(cgroup, [=] {
      std::vector<std::thread> threads;
      for (int i = 0; i < count; ++i) {
        threads.emplace_back([=] {
          PinToCpu(cpu);
          char byte;
          if (read(go_fd, &byte, 1) != 1) return;
          SpinFor(spin);
          pause();
        });
      }
      for (auto& thread : threads) thread.join();
      return 0;
    });
  }

  int cpu_ = 0;
};

// Ground truth: 3 CPU-bound threads pinned to one CPU for 2 s wait for each other. Between two
// instants at which every thread of the process is asleep, the sum of their schedstat run_delay
// deltas must equal kpulse's _sum delta for the cgroup, and the pcount deltas its _count delta.
// Tolerance 3%: the wakeup hook timestamps a wakeup at the tracepoint, a little after the
// kernel's own enqueue clock read, and a preempted task at the switch-out tracepoint; the
// sched_info hook reads the kernel's own numbers and must agree exactly. An idle cgroup next to
// it must get no run-queue time at all. Run with per-CPU histograms (the default on this host:
// every cgroup fits the budget) and with shared ones (atomic adds; one hot slot before them, so
// the shared array's offset is exercised too).
void RunqueueProbeTest::ExpectCgroupMatchesSchedstat(size_t hot_histogram_bytes) {
  constexpr int kSpinners = 3;
  TestCgroup busy("rq"), idle("rqidle");
  auto probe = StartProbe({}, hot_histogram_bytes);

  int go[2];
  ASSERT_EQ(pipe(go), 0);
  CgroupChild spinners = SpinnersOnOneCpu(busy, kSpinners, go[0], 2s);
  CgroupChild idler(idle, [] {
    pause();
    return 0;
  });
  ASSERT_TRUE(WaitAllAsleep(spinners.pid(), kSpinners + 1, 5s));
  ASSERT_TRUE(WaitAllAsleep(idler.pid(), 1, 5s));

  const SchedStat before = ProcessSchedStat(spinners.pid());
  const RunqueueSnapshot kpulse_before = Snapshot(*probe);
  const sched_hist idle_before = CgroupHist(kpulse_before, idle.id());
  ASSERT_EQ(write(go[1], "xxx", kSpinners), kSpinners);
  std::this_thread::sleep_for(2s);
  ASSERT_TRUE(WaitAllAsleep(spinners.pid(), kSpinners + 1, 10s));
  const SchedStat after = ProcessSchedStat(spinners.pid());
  const RunqueueSnapshot kpulse_after = Snapshot(*probe);

  const sched_hist kpulse =
      Delta(CgroupHist(kpulse_after, busy.id()), CgroupHist(kpulse_before, busy.id()));
  const double kernel_delay = static_cast<double>(after.run_delay_ns - before.run_delay_ns);
  const double kernel_pcount = static_cast<double>(after.pcount - before.pcount);
  std::printf("%s%s: run_delay kernel %.3f s, kpulse %.3f s; pcount kernel %.0f, kpulse %llu\n",
              std::string(ToString(GetParam())).c_str(),
              hot_histogram_bytes < kDefaultHotHistogramBytes ? " (shared histograms)" : "",
              kernel_delay * 1e-9, static_cast<double>(kpulse.sum_ns) * 1e-9, kernel_pcount,
              static_cast<unsigned long long>(HistCount(kpulse)));
  EXPECT_GT(kernel_delay, 1e9) << "3 spinners on one CPU for 2 s wait > 1 s in all (setup)";
  EXPECT_NEAR(static_cast<double>(kpulse.sum_ns), kernel_delay, 0.03 * kernel_delay);
  EXPECT_NEAR(static_cast<double>(HistCount(kpulse)), kernel_pcount, 0.03 * kernel_pcount);

  const sched_hist idle_delta = Delta(CgroupHist(kpulse_after, idle.id()), idle_before);
  EXPECT_EQ(HistCount(idle_delta), 0u);
  EXPECT_EQ(idle_delta.sum_ns, 0u);
}

TEST_P(RunqueueProbeTest, CgroupSumAndCountMatchSchedstatRunDelayAndPcount) {
  ExpectCgroupMatchesSchedstat(kDefaultHotHistogramBytes);
}

TEST_P(RunqueueProbeTest, SharedHistogramsMatchSchedstatToo) {
  ExpectCgroupMatchesSchedstat(test::OneHotSlot(sizeof(sched_hist)));
}

// A normal thread in cgroup X is woken by a SCHED_FIFO thread of cgroup Y on the same CPU, which
// then spins for 24 ms: every wait of X's thread is ~24 ms, in the bucket [16.78, 33.55) ms
// (le = 2^25 ns = 0.033554432), and is charged to X (the waiting task), never to Y (the waker).
TEST_P(RunqueueProbeTest, WaitsLandInTheirBucketAndAreChargedToTheWaitingCgroup) {
  constexpr int kRounds = 12;
  constexpr int kExpectedSlot = 14;  // floor(log2(24e6 ns)) - 10
  TestCgroup wakee("rqwakee"), waker("rqwaker");
  auto probe = StartProbe();
  int wake[2];
  ASSERT_EQ(pipe(wake), 0);
  const int cpu = cpu_;

  CgroupChild woken(wakee, [&] {
    PinToCpu(cpu);
    char byte;
    for (int i = 0; i < kRounds; ++i) {
      if (read(wake[0], &byte, 1) != 1) return 1;
    }
    pause();
    return 0;
  });
  ASSERT_TRUE(WaitAllAsleep(woken.pid(), 1, 5s));
  const RunqueueSnapshot before = Snapshot(*probe);
  const SchedStat wakee_before = ProcessSchedStat(woken.pid());

  int waker_truth[2];  // the waker's own run_delay, read by itself just before it exits
  ASSERT_EQ(pipe(waker_truth), 0);
  CgroupChild spinner(waker, [&] {
    PinToCpu(cpu);
    sched_param param{};
    param.sched_priority = 10;
    if (sched_setscheduler(0, SCHED_FIFO, &param) != 0) return 2;
    for (int i = 0; i < kRounds; ++i) {
      if (write(wake[1], "w", 1) != 1) return 3;
      SpinFor(24ms);  // the woken thread waits behind us
      std::this_thread::sleep_for(40ms);
    }
    const uint64_t own_delay = ThreadSchedStat().run_delay_ns;
    if (write(waker_truth[1], &own_delay, sizeof(own_delay)) != sizeof(own_delay)) return 4;
    return 0;
  });
  EXPECT_EQ(spinner.Wait(), 0) << "the FIFO waker failed (2: sched_setscheduler)";
  uint64_t waker_delay_ns = 0;
  ASSERT_EQ(read(waker_truth[0], &waker_delay_ns, sizeof(waker_delay_ns)),
            static_cast<ssize_t>(sizeof(waker_delay_ns)));
  close(waker_truth[0]);
  close(waker_truth[1]);
  ASSERT_TRUE(WaitAllAsleep(woken.pid(), 1, 5s));
  const RunqueueSnapshot after = Snapshot(*probe);
  const SchedStat wakee_after = ProcessSchedStat(woken.pid());

  const sched_hist x = Delta(CgroupHist(after, wakee.id()), CgroupHist(before, wakee.id()));
  const sched_hist y = Delta(CgroupHist(after, waker.id()), CgroupHist(before, waker.id()));
  // Every switch-in ends a wait: the 12 wakeups, and any preemption of the wakee by others.
  const uint64_t switch_ins = wakee_after.pcount - wakee_before.pcount;
  EXPECT_GE(switch_ins, static_cast<uint64_t>(kRounds));
  if (GetParam() == SchedHook::kSchedInfo) {
    EXPECT_EQ(HistCount(x), switch_ins) << "one wait per switch-in (schedstat pcount)";
  } else {  // stamps at the tracepoints: a switch-in at the window's edge may fall either side
    EXPECT_NEAR(static_cast<double>(HistCount(x)), static_cast<double>(switch_ins), 1.0);
  }
  EXPECT_GE(x.slots[kExpectedSlot], static_cast<uint64_t>(kRounds - 1))
      << "~24 ms waits belong in [16.78, 33.55) ms";
  const double kernel_delay =
      static_cast<double>(wakee_after.run_delay_ns - wakee_before.run_delay_ns);
  EXPECT_NEAR(static_cast<double>(x.sum_ns), kernel_delay, 0.03 * kernel_delay);
  // The waker's cgroup is charged its own waits and nothing of the wakee's (12 x ~24 ms). Its
  // truth is its own run_delay, read by itself: on a quiet machine the FIFO waker hardly waits,
  // but under outside load it can wait for ms before it becomes FIFO (CI saw it), so "no long
  // waits" was not a property of kpulse. 1 ms: waits between its own read and its exit.
  EXPECT_LE(static_cast<double>(y.sum_ns), static_cast<double>(waker_delay_ns) + 1e6)
      << "waker run_delay " << waker_delay_ns << " ns";
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(kExpectedSlot), 0.033554432);
}

// The wakeup hook's tid-keyed start maps (run-queue and off-CPU) must not keep entries of threads
// that exited. (The sched_info hook keeps its state in task storage, which the kernel frees with
// the task.) Most exits consume their entries anyway; the one that does not is a wakeup that
// stamps a thread still on its CPU just before it exits (CI saw it once in 300 threads when the
// delete sat in sched_process_exit, which runs before the exiting thread's last wakeups). The
// delete now sits at the final TASK_DEAD switch-out, after which nothing can stamp the task.
TEST(RunqueueWakeupHook, StartMapKeepsNoEntriesOfExitedThreads) {
  KPULSE_REQUIRE_ROOT();
  TestCgroup cgroup("rqexit");
  auto probe = SchedProbe::Start({RunqueueConfig{}, OffcpuConfig{}, SchedHook::kWakeup});
  int tids[2];
  ASSERT_EQ(pipe(tids), 0);
  CgroupChild churn(cgroup, [&] {
    for (int round = 0; round < 10; ++round) {
      std::vector<std::thread> threads;
      for (int i = 0; i < 30; ++i) {
        threads.emplace_back([&] {
          const auto tid = static_cast<uint32_t>(syscall(SYS_gettid));
          (void)!write(tids[1], &tid, sizeof(tid));
          std::this_thread::sleep_for(1ms);  // a wakeup: one start entry while it waits
        });
      }
      for (auto& thread : threads) thread.join();
    }
    return 0;
  });
  EXPECT_EQ(churn.Wait(), 0);
  close(tids[1]);
  std::set<uint32_t> exited;
  uint32_t tid;
  while (read(tids[0], &tid, sizeof(tid)) == sizeof(tid)) exited.insert(tid);
  EXPECT_EQ(exited.size(), 300u);

  // With pid_max 32768 and the thousands of tasks other tests start, a tid can already belong to
  // a new task (whose own entry is legitimate): only tids that no task has now count.
  const auto leaked_of = [&](const std::vector<uint32_t>& entries) {
    size_t leaked = 0;
    for (uint32_t entry : entries) {
      const bool reused = access(("/proc/" + std::to_string(entry)).c_str(), F_OK) == 0;
      leaked += exited.count(entry) != 0 && !reused;
    }
    return leaked;
  };
  auto left = probe->StartMapTids();
  ASSERT_TRUE(left) << left.error();
  const size_t leaked = leaked_of(*left);
  EXPECT_EQ(leaked, 0u) << "run-queue start map entries of exited threads";

  auto blocked = probe->OffcpuStartMapTids();
  ASSERT_TRUE(blocked) << blocked.error();
  const size_t blocked_leaked = leaked_of(*blocked);
  EXPECT_EQ(blocked_leaked, 0u) << "off-CPU start map entries of exited threads";
}

// per_cpu keys each histogram by the CPU whose run queue the thread waited on: a process pinned
// to one CPU from birth (it inherits the test thread's affinity) waits only there.
TEST_P(RunqueueProbeTest, PerCpuHistogramsNameThePinnedCpu) {
  TestCgroup cgroup("rqcpu");
  RunqueueConfig config;
  config.per_cpu = true;
  auto probe = StartProbe(config);
  cpu_set_t own_affinity;
  ASSERT_EQ(sched_getaffinity(0, sizeof(own_affinity), &own_affinity), 0);
  PinToCpu(cpu_);
  CgroupChild spinners(cgroup, [&] {
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i) threads.emplace_back([&] { SpinFor(300ms); });
    for (auto& thread : threads) thread.join();
    return 0;
  });
  ASSERT_EQ(sched_setaffinity(0, sizeof(own_affinity), &own_affinity), 0);
  EXPECT_EQ(spinners.Wait(), 0);
  std::map<uint32_t, uint64_t> waits_by_cpu;
  for (const auto& [key, hist] : Snapshot(*probe).hists) {
    if (key.cgroup_id == cgroup.id()) waits_by_cpu[key.cpu] += HistCount(hist);
  }
  EXPECT_GT(waits_by_cpu[static_cast<uint32_t>(cpu_)], 10u) << "two spinners share one CPU";
  for (const auto& [key_cpu, waits] : waits_by_cpu) {
    if (key_cpu != static_cast<uint32_t>(cpu_)) {
      EXPECT_EQ(waits, 0u) << "cpu " << key_cpu;
    }
  }
  EXPECT_EQ(waits_by_cpu.count(kAllCpus), 0u);
}

// Histograms are per cgroup slot, and slots run out: with runqueue_latency.max_cgroups = 1 the
// host's first cgroup to switch takes the only run-queue slot, so the test cgroup's waits must go
// to the node-wide overflow (exported as cgroup="<other>"): the overflow must grow by at least the
// threads' schedstat run_delay delta (3% tolerance for the wakeup hook, as above; other cgroups'
// waits add to it too), and the cgroup must have no run-queue histogram. The off-CPU probe keeps
// its own 4096 slots in the same slot table: the cgroup's blocks (each thread blocks at least
// once, in read) are still there.
TEST_P(RunqueueProbeTest, CgroupsBeyondTheSlotsGoToTheOverflow) {
  constexpr int kSpinners = 2;
  TestCgroup cgroup("rqfull");
  RunqueueConfig config;
  config.max_cgroups = 1;
  auto probe = StartProbe(config);
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  CgroupChild spinners = SpinnersOnOneCpu(cgroup, kSpinners, go[0], 1s);
  ASSERT_TRUE(WaitAllAsleep(spinners.pid(), kSpinners + 1, 5s));
  const SchedStat before = ProcessSchedStat(spinners.pid());
  const RunqueueSnapshot kpulse_before = Snapshot(*probe);
  ASSERT_EQ(write(go[1], "xx", kSpinners), kSpinners);
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(WaitAllAsleep(spinners.pid(), kSpinners + 1, 10s));
  const SchedStat after = ProcessSchedStat(spinners.pid());
  const RunqueueSnapshot kpulse_after = Snapshot(*probe);

  const double kernel_delay = static_cast<double>(after.run_delay_ns - before.run_delay_ns);
  const sched_hist overflow = Delta(kpulse_after.overflow, kpulse_before.overflow);
  std::printf("%s: run_delay kernel %.3f s, overflow grew %.3f s\n",
              std::string(ToString(GetParam())).c_str(), kernel_delay * 1e-9,
              static_cast<double>(overflow.sum_ns) * 1e-9);
  EXPECT_GT(kernel_delay, 0.3e9) << "2 spinners on one CPU for 1 s (setup)";
  EXPECT_GE(static_cast<double>(overflow.sum_ns), 0.97 * kernel_delay);
  EXPECT_EQ(HistCount(CgroupHist(kpulse_after, cgroup.id())), 0u);
  EXPECT_EQ(kpulse_after.capacity, 1u);
  EXPECT_EQ(kpulse_after.cgroups, 1u);

  auto offcpu = probe->OffcpuSnapshotNow();
  ASSERT_TRUE(offcpu) << offcpu.error();
  const sched_hist blocked = SumHists(offcpu->hists, [&](const OffcpuKey& key) {
    return key.cgroup_id == cgroup.id() && key.state == OFFCPU_SLEEP;
  });
  EXPECT_GE(HistCount(blocked), static_cast<uint64_t>(kSpinners));
  EXPECT_GT(offcpu->cgroups, 1u);
}

uint64_t ProcStatContextSwitches() {
  std::ifstream file("/proc/stat");
  std::string key;
  uint64_t value = 0;
  while (file >> key) {
    if (key == "ctxt" && file >> value) return value;
    file.ignore(1 << 20, '\n');
  }
  return 0;
}

// The self-metric kpulse_bpf_program_runs_total{program=~"sched_switch.*"} against the kernel's
// own count of context switches (/proc/stat ctxt, every CPU). Both count __schedule() calls that
// switch tasks; the two reads are not atomic together, hence 1% tolerance.
TEST_P(RunqueueProbeTest, SchedSwitchProgramRunsMatchProcStatContextSwitches) {
  const int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  ASSERT_GE(stats_fd, 0) << strerror(errno);
  auto probe = StartProbe();
  BpfProgramCollector collector({probe->object()});
  auto switch_runs = [&] {
    double runs = 0;
    for (const auto& family : collector.Collect()) {
      if (family.name != "kpulse_bpf_program_runs_total") continue;
      for (const auto& metric : family.metric) {
        if (metric.label.at(0).value.rfind("sched_switch", 0) == 0) runs += metric.counter.value;
      }
    }
    return runs;
  };
  const double runs_before = switch_runs();
  const uint64_t ctxt_before = ProcStatContextSwitches();
  int ping[2], pong[2];
  ASSERT_EQ(pipe(ping), 0);
  ASSERT_EQ(pipe(pong), 0);
  std::thread echo([&] {  // 20000 round trips: at least 40000 context switches
    char byte;
    while (read(ping[0], &byte, 1) == 1 && write(pong[1], &byte, 1) == 1) {
    }
  });
  char byte = 'x';
  for (int i = 0; i < 20000; ++i) {
    ASSERT_EQ(write(ping[1], &byte, 1), 1);
    ASSERT_EQ(read(pong[0], &byte, 1), 1);
  }
  close(ping[1]);
  echo.join();
  for (int fd : {ping[0], pong[0], pong[1]}) close(fd);
  const double runs = switch_runs() - runs_before;
  const double ctxt = static_cast<double>(ProcStatContextSwitches() - ctxt_before);
  close(stats_fd);
  std::printf("context switches: /proc/stat %.0f, kpulse program runs %.0f\n", ctxt, runs);
  EXPECT_GT(ctxt, 40000);
  EXPECT_NEAR(runs, ctxt, 0.01 * ctxt);
}

INSTANTIATE_TEST_SUITE_P(BothHooks, RunqueueProbeTest,
                         ::testing::Values(SchedHook::kSchedInfo, SchedHook::kWakeup),
                         [](const auto& param_info) {
                           return std::string(ToString(param_info.param));
                         });

}  // namespace
}  // namespace kpulse
