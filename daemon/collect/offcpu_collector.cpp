#include "collect/offcpu_collector.h"

#include <spdlog/spdlog.h>

#include <map>

#include "collect/family_builder.h"
#include "collect/runqueue_collector.h"  // ToPrometheusHistogram

namespace kpulse {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

}  // namespace

std::string_view OffcpuStateName(uint32_t state) {
  switch (state) {
    case OFFCPU_SLEEP:
      return "sleep";
    case OFFCPU_DISK:
      return "disk";
    case OFFCPU_IDLE:
      return "idle";
    case OFFCPU_OTHER:
      return "other";
    default:
      return "unknown";
  }
}

OffcpuCollector::OffcpuCollector(const OffcpuSource& source, CgroupPathLookup cgroup_path)
    : source_(source), cgroup_path_(std::move(cgroup_path)) {}

std::vector<MetricFamily> OffcpuCollector::Collect() const {
  std::vector<MetricFamily> families;
  const auto snapshot = read_errors_.Take([this] { return source_.OffcpuSnapshotNow(); });
  if (!snapshot) {
    families.push_back(read_errors_.Family());
    return families;
  }

  // Entries sharing a label set (deleted cgroups) are summed; overflow is cgroup="<other>".
  std::map<std::pair<std::string, uint32_t>, sched_hist> by_label;
  for (const auto& [key, hist] : snapshot->hists) {
    std::string label = CgroupLabel(cgroup_path_, key.cgroup_id);
    AddHist(by_label[{std::move(label), key.state}], hist);
  }
  for (uint32_t state = 0; state < OFFCPU_STATE_MAX; ++state) {
    if (HistCount(snapshot->overflow[state]) != 0) {
      AddHist(by_label[{kOverflowCgroupLabel, state}], snapshot->overflow[state]);
    }
  }

  auto seconds = MakeFamily("kpulse_offcpu_seconds_total",
                            "Time threads spent blocked (off-CPU, not runnable), by the cgroup of "
                            "the thread and the state it blocked in.",
                            MetricType::Counter);
  auto durations = MakeFamily("kpulse_offcpu_block_duration_seconds",
                              "Durations of blocked (off-CPU) intervals, by cgroup and state.",
                              MetricType::Histogram);
  for (const auto& [labels, hist] : by_label) {
    std::vector<ClientMetric::Label> label_set = {
        {"cgroup", labels.first}, {"state", std::string(OffcpuStateName(labels.second))}};
    AddSample(seconds, label_set, static_cast<double>(hist.sum_ns) / 1e9);
    ClientMetric metric;
    metric.label = std::move(label_set);
    metric.histogram = ToPrometheusHistogram(hist);
    durations.metric.push_back(std::move(metric));
  }
  families.push_back(std::move(seconds));
  families.push_back(std::move(durations));

  for (auto& family : MapFillFamilies({{"offcpu_hists", snapshot->cgroups, snapshot->capacity}})) {
    families.push_back(std::move(family));
  }

  auto start_drops = MakeFamily("kpulse_offcpu_start_drops_total",
                                "wakeup hook: blocked threads whose interval could not be timed "
                                "because the start map was full (probes.offcpu.max_tasks).",
                                MetricType::Counter);
  AddSample(start_drops, {}, static_cast<double>(snapshot->start_drops));
  families.push_back(std::move(start_drops));
  auto stack_drops = MakeFamily("kpulse_offcpu_stack_drops_total",
                                "Blocked intervals above the stack threshold that got no stack "
                                "entry (stack maps full). Their time is still in the totals.",
                                MetricType::Counter);
  AddSample(stack_drops, {}, static_cast<double>(snapshot->stack_drops));
  families.push_back(std::move(stack_drops));

  families.push_back(read_errors_.Family());
  return families;
}

}  // namespace kpulse
