// Scheduler probe overhead: a two-process pipe ping-pong pinned to one CPU (about a million
// context switches per second) run alternately with no probe (baseline) and with each scheduler
// probe configuration, reporting throughput ratios against the baseline of the same invocation, and
// the BPF cost per program run and per context switch (kernel BPF stats, enabled only for those
// rounds).
//
// usage: kpulse_sched_bench [rounds=5] [seconds_per_round=1]   (root)
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <prometheus/metric_family.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "bench_util.h"
#include "bpf/sched_probe.h"
#include "collect/bpf_program_collector.h"

namespace {

using kpulse::bench::Median;
using kpulse::bench::PinToCpu;
using namespace std::chrono_literals;

// Round trips per second of a pipe ping-pong between two processes on one CPU.
double PingPong(int cpu, double seconds) {
  int ping[2], pong[2], result[2];
  if (pipe(ping) || pipe(pong) || pipe(result)) std::abort();
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
    uint64_t trips = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      for (int i = 0; i < 1000; ++i) {
        if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1) _exit(1);
      }
      trips += 1000;
    }
    const double rate = static_cast<double>(trips) / seconds;
    (void)!write(result[1], &rate, sizeof(rate));
    _exit(0);
  }
  double rate = 0;
  (void)!read(result[0], &rate, sizeof(rate));
  waitpid(driver, nullptr, 0);
  kill(echo, SIGKILL);
  waitpid(echo, nullptr, 0);
  for (int fd : {ping[0], ping[1], pong[0], pong[1], result[0], result[1]}) close(fd);
  return rate;
}

struct ProgramCost {
  uint64_t runs = 0, ns = 0;
};

// ns per run as a user sees it: kpulse's own self-metrics,
// kpulse_bpf_program_run_seconds_total / kpulse_bpf_program_runs_total, summed over programs.
double SelfMetricNsPerRun(const bpf_object* object) {
  double seconds = 0, runs = 0;
  for (const auto& family : kpulse::BpfProgramCollector({object}).Collect()) {
    for (const auto& metric : family.metric) {
      if (family.name == "kpulse_bpf_program_run_seconds_total") seconds += metric.counter.value;
      if (family.name == "kpulse_bpf_program_runs_total") runs += metric.counter.value;
    }
  }
  return runs > 0 ? seconds * 1e9 / runs : 0.0;
}

std::map<std::string, ProgramCost> ProgramCosts(const bpf_object* object) {
  std::map<std::string, ProgramCost> costs;
  bpf_program* program = nullptr;
  bpf_object__for_each_program(program, object) {
    if (bpf_program__fd(program) < 0) continue;
    bpf_prog_info info{};
    __u32 length = sizeof(info);
    if (bpf_obj_get_info_by_fd(bpf_program__fd(program), &info, &length) == 0) {
      costs[bpf_program__name(program)] = {info.run_cnt, info.run_time_ns};
    }
  }
  return costs;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 1.0;
  const std::string only = argc > 3 ? argv[3] : "";  // run only variants whose name contains it
  const int cpu = static_cast<int>(std::thread::hardware_concurrency()) - 1;
  if (geteuid() != 0) {
    std::fprintf(stderr, "kpulse_sched_bench: needs root (loads BPF programs)\n");
    return 2;
  }
  libbpf_set_print([](libbpf_print_level, const char*, va_list) { return 0; });
  spdlog::set_level(spdlog::level::warn);

  // What runs on sched_switch: the run-queue probe alone, with the off-CPU probe (the default),
  // with off-CPU kernel stacks (stacks.enabled) and with user stacks too, for each hook.
  auto options = [](kpulse::SchedHook hook, bool offcpu, bool stacks, bool user_stacks = false) {
    kpulse::SchedProbeOptions o;
    o.hook = hook;
    o.offcpu.enabled = offcpu;
    o.offcpu.stacks.enabled = stacks;
    o.offcpu.stacks.user = user_stacks;
    return o;
  };
  using kpulse::SchedHook;
  std::vector<std::pair<std::string, kpulse::SchedProbeOptions>> variants = {
      {"sched_info runq", options(SchedHook::kSchedInfo, false, false)},
      {"sched_info runq+offcpu", options(SchedHook::kSchedInfo, true, false)},
      {"sched_info +stacks", options(SchedHook::kSchedInfo, true, true)},
      {"sched_info +user stacks", options(SchedHook::kSchedInfo, true, true, true)},
      {"wakeup runq", options(SchedHook::kWakeup, false, false)},
      {"wakeup runq+offcpu", options(SchedHook::kWakeup, true, false)},
  };
  std::erase_if(variants, [&](const auto& v) { return v.first.find(only) == std::string::npos; });
  // Per round: the baseline, then each variant twice: once for throughput, once with kernel BPF
  // stats on for its cost per run (stats add their own clock reads, so not in the same run).
  std::map<std::string, std::vector<double>> rates, ns_per_run, ns_per_switch;
  std::map<std::string, std::map<std::string, ProgramCost>> last_costs;
  std::map<std::string, double> last_self_metric;
  PingPong(cpu, 0.3);  // warm-up
  for (int round = 0; round < rounds; ++round) {
    rates["baseline"].push_back(PingPong(cpu, seconds));
    for (const auto& [name, variant] : variants) {
      {
        auto probe = kpulse::SchedProbe::Start(variant);
        rates[name].push_back(PingPong(cpu, seconds));
      }
      const int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
      auto probe = kpulse::SchedProbe::Start(variant);
      PingPong(cpu, seconds);
      const auto costs = ProgramCosts(probe->object());
      last_self_metric[name] = SelfMetricNsPerRun(probe->object());
      close(stats_fd);
      uint64_t runs = 0, ns = 0, switches = 0;
      for (const auto& [program, cost] : costs) {
        runs += cost.runs;
        ns += cost.ns;
        if (program.find("sched_switch") != std::string::npos) switches = cost.runs;
      }
      ns_per_run[name].push_back(runs ? double(ns) / double(runs) : 0.0);
      ns_per_switch[name].push_back(switches ? double(ns) / double(switches) : 0.0);
      last_costs[name] = costs;
    }
  }
  const double baseline = Median(rates["baseline"]);

  std::printf("ping-pong on CPU %d, %d alternating rounds of %.1f s, medians\n", cpu, rounds,
              seconds);
  std::printf("%-24s %14s %8s %14s %16s\n", "variant", "round trips/s", "ratio", "ns/program run",
              "ns/ctx switch");
  std::printf("%-24s %14.0f %8.3f %14s %16s\n", "baseline", baseline, 1.0, "-", "-");
  for (const auto& [name, variant] : variants) {
    std::printf("%-24s %14.0f %8.3f %14.1f %16.1f\n", name.c_str(), Median(rates[name]),
                Median(rates[name]) / baseline, Median(ns_per_run[name]),
                Median(ns_per_switch[name]));
    uint64_t runs = 0, ns = 0;
    for (const auto& [program, cost] : last_costs[name]) {  // the last round's, per program
      std::printf("  %-24s runs %10llu  %6.1f ns/run\n", program.c_str(),
                  static_cast<unsigned long long>(cost.runs),
                  cost.runs ? double(cost.ns) / double(cost.runs) : 0.0);
      runs += cost.runs;
      ns += cost.ns;
    }
    // The same round through the exported self-metrics (read just after): they must agree.
    std::printf("  %-24s %6.1f ns/run (harness %6.1f)\n", "self-metrics", last_self_metric[name],
                runs ? double(ns) / double(runs) : 0.0);
  }
  return 0;
}
