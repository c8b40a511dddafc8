// Cost per context switch when the same switching tasks are spread over 1, 100 and 2,000
// cgroups: 1,000 pipe ping-pong pairs (2,000 processes) pinned to one CPU, moved between cgroup
// layouts round after round, with the scheduler probes loaded and kernel BPF stats on. Prints the
// BPF ns per sched_switch run and the round trips per second for each layout, as ratios to the
// 1-cgroup layout of the same invocation, for the default probes and for variants that show where
// the spread cost goes (run queue only; every histogram in the shared arrays), and for two
// controls (bpf/bench/spread_control.bpf.c) that do only kpulse's per-task work on the same
// tracepoint, without any per-cgroup map: what the spread costs that work is the kernel's own
// per-cgroup footprint, not kpulse's per-cgroup state.
//
// usage: kpulse_cgroup_spread_bench [rounds=3] [seconds_per_round=1] [pairs=1000]   (root)
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "bench_util.h"
#include "bpf/sched_probe.h"
#include "cgroup/cgroup_resolver.h"
#include "spread_control.skel.h"

namespace {

using kpulse::bench::Median;
using kpulse::bench::PinToCpu;
using namespace std::chrono_literals;

// 2 x `pairs` processes ping-ponging through pipes on one CPU; each driver adds its round trips
// to a shared counter.
class PingPongPairs {
 public:
  PingPongPairs(int pairs, int cpu) {
    trips_ = static_cast<std::atomic<uint64_t>*>(mmap(nullptr, sizeof(std::atomic<uint64_t>),
                                                      PROT_READ | PROT_WRITE,
                                                      MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    new (trips_) std::atomic<uint64_t>(0);
    for (int i = 0; i < pairs; ++i) {
      int ping[2], pong[2];
      if (pipe(ping) || pipe(pong)) std::abort();
      const pid_t echo = fork();
      if (echo == 0) {
        PinToCpu(cpu);
        char byte;
        while (read(ping[0], &byte, 1) == 1 && write(pong[1], &byte, 1) == 1) {
        }
        _exit(0);
      }
      const pid_t driver = fork();
      if (driver == 0) {
        PinToCpu(cpu);
        char byte = 'x';
        for (;;) {
          for (int n = 0; n < 100; ++n) {
            if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1) _exit(1);
          }
          trips_->fetch_add(100, std::memory_order_relaxed);
        }
      }
      for (int fd : {ping[0], ping[1], pong[0], pong[1]}) close(fd);
      pids_.push_back(driver);
      pids_.push_back(echo);
    }
  }
  ~PingPongPairs() {
    for (pid_t pid : pids_) kill(pid, SIGKILL);
    for (pid_t pid : pids_) waitpid(pid, nullptr, 0);
    munmap(trips_, sizeof(*trips_));
  }
  const std::vector<pid_t>& pids() const { return pids_; }
  uint64_t trips() const { return trips_->load(); }

 private:
  std::vector<pid_t> pids_;
  std::atomic<uint64_t>* trips_;
};

// Cgroups /kpt-spread-<pid>/g<i>, removed (after moving every task back out) on destruction.
class Layouts {
 public:
  Layouts(const std::string& root, int count) : root_(root) {
    top_ = root + "/kpt-spread-" + std::to_string(getpid());
    if (mkdir(top_.c_str(), 0755) != 0) std::abort();
    for (int i = 0; i < count; ++i) {
      dirs_.push_back(top_ + "/g" + std::to_string(i));
      if (mkdir(dirs_.back().c_str(), 0755) != 0) std::abort();
    }
  }
  ~Layouts() {
    for (const auto& dir : dirs_) rmdir(dir.c_str());
    rmdir(top_.c_str());
  }
  // Task i into cgroup i % groups.
  void Spread(const std::vector<pid_t>& pids, int groups) const {
    for (size_t i = 0; i < pids.size(); ++i) {
      std::ofstream(dirs_[i % static_cast<size_t>(groups)] + "/cgroup.procs") << pids[i];
    }
  }
  // Every task back to the root, so the directories can go.
  void Release(const std::vector<pid_t>& pids) const {
    for (pid_t pid : pids) std::ofstream(root_ + "/cgroup.procs") << pid;
  }

 private:
  std::string root_, top_;
  std::vector<std::string> dirs_;
};

// The control object, one of its two programs loaded and attached.
class ControlProbe {
 public:
  static std::unique_ptr<ControlProbe> Start(bool with_cgroup_id) {
    auto control = std::unique_ptr<ControlProbe>(new ControlProbe);
    spread_control_bpf* skel = spread_control_bpf__open();
    if (!skel) return nullptr;
    control->skel_ = skel;
    bpf_program__set_autoload(skel->progs.sched_switch_control, !with_cgroup_id);
    bpf_program__set_autoload(skel->progs.sched_switch_control_cgid, with_cgroup_id);
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);  // as SchedProbe does: task->start_time's clock
    skel->rodata->task_epoch_ns =
        static_cast<uint64_t>(now.tv_sec) * 1000000000 + static_cast<uint64_t>(now.tv_nsec);
    if (spread_control_bpf__load(skel) != 0 || spread_control_bpf__attach(skel) != 0) {
      return nullptr;
    }
    return control;
  }
  ~ControlProbe() {
    if (skel_) spread_control_bpf__destroy(skel_);
  }
  ControlProbe(const ControlProbe&) = delete;
  ControlProbe& operator=(const ControlProbe&) = delete;
  const bpf_object* object() const { return skel_->obj; }

 private:
  ControlProbe() = default;
  spread_control_bpf* skel_ = nullptr;
};

struct Cost {
  uint64_t runs = 0, ns = 0;
};

Cost SwitchProgramCost(const bpf_object* object) {
  Cost cost;
  bpf_program* program = nullptr;
  bpf_object__for_each_program(program, object) {
    if (bpf_program__fd(program) < 0) continue;
    if (std::string(bpf_program__name(program)).find("sched_switch") == std::string::npos) {
      continue;
    }
    bpf_prog_info info{};
    __u32 length = sizeof(info);
    if (bpf_obj_get_info_by_fd(bpf_program__fd(program), &info, &length) == 0) {
      cost.runs += info.run_cnt;
      cost.ns += info.run_time_ns;
    }
  }
  return cost;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 1.0;
  const int pairs = argc > 3 ? std::atoi(argv[3]) : 1000;
  if (geteuid() != 0) {
    std::fprintf(stderr, "kpulse_cgroup_spread_bench: needs root (loads BPF programs)\n");
    return 2;
  }
  const auto root = kpulse::FindCgroup2Mount();
  if (!root) {
    std::fprintf(stderr, "kpulse_cgroup_spread_bench: no cgroup2 mount\n");
    return 2;
  }
  libbpf_set_print([](libbpf_print_level, const char*, va_list) { return 0; });
  spdlog::set_level(spdlog::level::warn);
  const int cpu = static_cast<int>(std::thread::hardware_concurrency()) - 1;
  const std::vector<int> layouts = {1, 100, 2 * pairs};

  struct Variant {
    std::string name;
    kpulse::SchedProbeOptions options;
    enum { kKpulse, kControl, kControlCgroupId } probe = kKpulse;
  };
  std::vector<Variant> variants(5);
  variants[0].name = "runq+offcpu (default)";
  variants[1].name = "runq only";
  variants[1].options.offcpu.enabled = false;
  variants[2].name = "runq+offcpu, all shared";
  variants[2].options.hot_histogram_bytes = 0;
  variants[3].name = "control: task state";
  variants[3].probe = Variant::kControl;
  variants[4].name = "control: +cgroup id";
  variants[4].probe = Variant::kControlCgroupId;

  PingPongPairs tasks(pairs, cpu);
  Layouts cgroups(*root, 2 * pairs);
  std::printf("%d ping-pong pairs (%zu processes) on CPU %d, %d rounds of %.1f s per layout, "
              "medians\n",
              pairs, tasks.pids().size(), cpu, rounds, seconds);
  std::printf("%-26s %9s %14s %8s %12s %8s\n", "variant", "cgroups", "round trips/s", "ratio",
              "ns/switch", "ratio");
  for (const Variant& variant : variants) {
    const int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    std::unique_ptr<kpulse::SchedProbe> probe;
    std::unique_ptr<ControlProbe> control;
    const bpf_object* object = nullptr;
    if (variant.probe == Variant::kKpulse) {
      probe = kpulse::SchedProbe::Start(variant.options);
      if (probe) object = probe->object();
    } else {
      control = ControlProbe::Start(variant.probe == Variant::kControlCgroupId);
      if (control) object = control->object();
    }
    if (!object) {
      std::fprintf(stderr, "kpulse_cgroup_spread_bench: %s did not load\n", variant.name.c_str());
      cgroups.Release(tasks.pids());
      return 1;
    }
    std::map<int, std::vector<double>> rates, ns;
    for (int round = 0; round < rounds; ++round) {
      for (int groups : layouts) {
        cgroups.Spread(tasks.pids(), groups);
        std::this_thread::sleep_for(300ms);  // every task has switched in its new cgroup
        const Cost before = SwitchProgramCost(object);
        const uint64_t trips_before = tasks.trips();
        std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
        const Cost after = SwitchProgramCost(object);
        const uint64_t trips = tasks.trips() - trips_before;
        rates[groups].push_back(static_cast<double>(trips) / seconds);
        ns[groups].push_back(static_cast<double>(after.ns - before.ns) /
                             static_cast<double>(std::max<uint64_t>(after.runs - before.runs, 1)));
      }
    }
    probe.reset();
    control.reset();
    close(stats_fd);
    const double base_rate = Median(rates[1]), base_ns = Median(ns[1]);
    for (int groups : layouts) {
      std::printf("%-26s %9d %14.0f %8.3f %12.1f %8.3f\n", variant.name.c_str(), groups,
                  Median(rates[groups]), Median(rates[groups]) / base_rate, Median(ns[groups]),
                  Median(ns[groups]) / base_ns);
    }
  }
  cgroups.Release(tasks.pids());
  return 0;
}
