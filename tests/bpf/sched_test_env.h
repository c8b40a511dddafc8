#pragma once
// Helpers for the scheduler probe tests: the kernel's per-thread accounting (schedstat), thread
// states, CPU pinning, and child processes in a test cgroup.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>

#include "config/config.h"
#include "bpf/sched_probe.h"
#include "test_env.h"

namespace kpulse::test {

/// /proc/<pid>/task/<tid>/schedstat: on-CPU ns, run-queue wait ns (run_delay), times run.
struct SchedStat {
  uint64_t exec_ns = 0, run_delay_ns = 0, pcount = 0;
};

/// Summed over every thread of `pid`.
SchedStat ProcessSchedStat(pid_t pid);
/// The calling thread's own schedstat (/proc/thread-self/schedstat).
SchedStat ThreadSchedStat();

/// Waits until `pid` has `threads` threads, all sleeping (S or D): every one has switched out
/// and had its last interval accounted.
bool WaitAllAsleep(pid_t pid, size_t threads, std::chrono::milliseconds timeout);

/// Sum of the histograms of `cgroup_id` in a snapshot's entries (all CPUs / states).
template <typename Entries, typename Match>
sched_hist SumHists(const Entries& entries, Match match) {
  sched_hist sum{};
  for (const auto& [key, hist] : entries) {
    if (match(key)) AddHist(sum, hist);
  }
  return sum;
}
sched_hist CgroupHist(const RunqueueSnapshot& snapshot, uint64_t cgroup_id);
sched_hist Delta(const sched_hist& after, const sched_hist& before);

void PinToCpu(int cpu);
void SpinFor(std::chrono::microseconds duration);

/// A SchedProbeOptions::hot_histogram_bytes that gives a probe whose histograms take
/// `bytes_per_slot` per cgroup exactly one slot of per-CPU histograms: a test cgroup (never the
/// first to switch after load) then lives in its shared arrays, past the hot slot.
size_t OneHotSlot(size_t bytes_per_slot);

/// A process created with fork() that joins `cgroup`, runs `body`, and exits with its value;
/// killed and reaped on destruction if still running.
class CgroupChild {
 public:
  CgroupChild(const TestCgroup& cgroup, std::function<int()> body);
  ~CgroupChild();
  CgroupChild(const CgroupChild&) = delete;
  CgroupChild& operator=(const CgroupChild&) = delete;
  pid_t pid() const { return pid_; }
  int Wait();

 private:
  pid_t pid_ = -1;
};

}  // namespace kpulse::test
