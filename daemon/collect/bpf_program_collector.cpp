#include "collect/bpf_program_collector.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "collect/family_builder.h"

namespace kpulse {

BpfProgramCollector::BpfProgramCollector(std::vector<const bpf_object*> objects)
    : objects_(std::move(objects)) {}

std::vector<prometheus::MetricFamily> BpfProgramCollector::Collect() const {
  using prometheus::MetricType;
  auto runs = MakeFamily("kpulse_bpf_program_runs_total",
                         "Runs of a kpulse BPF program (counted only while BPF stats are on).",
                         MetricType::Counter);
  auto seconds = MakeFamily("kpulse_bpf_program_run_seconds_total",
                            "Time spent in a kpulse BPF program (counted only while BPF stats "
                            "are on: bpf_stats: true or kernel.bpf_stats_enabled=1).",
                            MetricType::Counter);
  auto misses = MakeFamily("kpulse_bpf_program_recursion_misses_total",
                           "Events a kpulse BPF program did not see because it was already running "
                           "on that CPU (a preempted run; counted whether or not stats are on).",
                           MetricType::Counter);
  for (const bpf_object* object : objects_) {
    bpf_program* program = nullptr;
    bpf_object__for_each_program(program, object) {
      const int fd = bpf_program__fd(program);
      if (fd < 0) continue;  // not loaded (the other hook variant)
      bpf_prog_info info{};
      __u32 length = sizeof(info);
      if (bpf_obj_get_info_by_fd(fd, &info, &length) != 0) continue;
      const std::string name = bpf_program__name(program);
      AddSample(runs, {{"program", name}}, static_cast<double>(info.run_cnt));
      AddSample(seconds, {{"program", name}}, static_cast<double>(info.run_time_ns) / 1e9);
      AddSample(misses, {{"program", name}}, static_cast<double>(info.recursion_misses));
    }
  }
  return {std::move(runs), std::move(seconds), std::move(misses)};
}

}  // namespace kpulse
