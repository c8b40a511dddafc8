#include "sched_test_env.h"

#include <bpf/libbpf.h>
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <thread>

namespace kpulse::test {

namespace {

bool ReadSchedStat(const std::string& path, SchedStat& out) {
  std::ifstream file(path);
  return static_cast<bool>(file >> out.exec_ns >> out.run_delay_ns >> out.pcount);
}

// Calls `fn(task_dir)` for every thread of `pid`; returns the thread count.
template <typename Fn>
size_t ForEachThread(pid_t pid, Fn fn) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* tasks = opendir(dir.c_str());
  if (!tasks) return 0;
  size_t count = 0;
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    ++count;
    fn(dir + "/" + entry->d_name);
  }
  closedir(tasks);
  return count;
}

}  // namespace

SchedStat ProcessSchedStat(pid_t pid) {
  SchedStat sum;
  ForEachThread(pid, [&](const std::string& task) {
    SchedStat one;
    if (ReadSchedStat(task + "/schedstat", one)) {
      sum.exec_ns += one.exec_ns;
      sum.run_delay_ns += one.run_delay_ns;
      sum.pcount += one.pcount;
    }
  });
  return sum;
}

SchedStat ThreadSchedStat() {
  SchedStat one;
  ReadSchedStat("/proc/thread-self/schedstat", one);
  return one;
}

bool WaitAllAsleep(pid_t pid, size_t threads, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    size_t asleep = 0;
    const size_t total = ForEachThread(pid, [&](const std::string& task) {
      std::ifstream file(task + "/stat");
      const std::string stat((std::istreambuf_iterator<char>(file)),
                             std::istreambuf_iterator<char>());
      const auto paren = stat.rfind(')');  // the state follows the command name
      if (paren != std::string::npos && paren + 2 < stat.size() &&
          (stat[paren + 2] == 'S' || stat[paren + 2] == 'D')) {
        ++asleep;
      }
    });
    if (total == threads && asleep == total) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

sched_hist CgroupHist(const RunqueueSnapshot& snapshot, uint64_t cgroup_id) {
  return SumHists(snapshot.hists,
                  [&](const RunqueueKey& key) { return key.cgroup_id == cgroup_id; });
}

sched_hist Delta(const sched_hist& after, const sched_hist& before) {
  sched_hist delta{};
  for (int slot = 0; slot < SCHED_HIST_SLOTS; ++slot) {
    delta.slots[slot] = after.slots[slot] - before.slots[slot];
  }
  delta.sum_ns = after.sum_ns - before.sum_ns;
  return delta;
}

void PinToCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

size_t OneHotSlot(size_t bytes_per_slot) {
  return bytes_per_slot * static_cast<size_t>(libbpf_num_possible_cpus());
}

void SpinFor(std::chrono::microseconds duration) {
  const auto end = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < end) {
  }
}

CgroupChild::CgroupChild(const TestCgroup& cgroup, std::function<int()> body) {
  const std::string procs = cgroup.dir() + "/cgroup.procs";
  pid_ = fork();
  if (pid_ == 0) {
    std::ofstream(procs) << 0;
    _exit(body());
  }
}

CgroupChild::~CgroupChild() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

int CgroupChild::Wait() {
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace kpulse::test
