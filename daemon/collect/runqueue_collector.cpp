#include "collect/runqueue_collector.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <map>

#include "collect/family_builder.h"

namespace kpulse {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

void AddHistogram(MetricFamily& family, std::vector<ClientMetric::Label> labels,
                  const sched_hist& hist) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.histogram = ToPrometheusHistogram(hist);
  family.metric.push_back(std::move(metric));
}

}  // namespace

double SlotUpperBoundSeconds(int slot) {
  return std::ldexp(1.0, slot + SCHED_HIST_MIN_LOG2 + 1) / 1e9;
}

ClientMetric::Histogram ToPrometheusHistogram(const sched_hist& hist) {
  ClientMetric::Histogram out;
  uint64_t cumulative = 0;
  for (int slot = 0; slot + 1 < SCHED_HIST_SLOTS; ++slot) {
    cumulative += hist.slots[slot];
    out.bucket.push_back({cumulative, SlotUpperBoundSeconds(slot)});
  }
  // The open-ended last slot lands only in +Inf, which the serializer adds with sample_count.
  out.sample_count = HistCount(hist);
  out.sample_sum = static_cast<double>(hist.sum_ns) / 1e9;
  return out;
}

RunqueueCollector::RunqueueCollector(const RunqueueSource& source, CgroupPathLookup cgroup_path,
                                     RunqueueConfig config)
    : source_(source), cgroup_path_(std::move(cgroup_path)), config_(std::move(config)) {}

std::vector<MetricFamily> RunqueueCollector::Collect() const {
  std::vector<MetricFamily> families;
  const auto snapshot = read_errors_.Take([this] { return source_.RunqueueSnapshotNow(); });
  if (!snapshot) {
    families.push_back(read_errors_.Family());
    return families;
  }

  // Per cgroup (and CPU): entries sharing a label set (deleted cgroups) are summed.
  std::map<std::pair<std::string, uint32_t>, sched_hist> by_label;
  sched_hist node = snapshot->overflow;
  for (const auto& [key, hist] : snapshot->hists) {
    std::string label = CgroupLabel(cgroup_path_, key.cgroup_id);
    AddHist(by_label[{std::move(label), key.cpu}], hist);
    AddHist(node, hist);
  }
  if (HistCount(snapshot->overflow) != 0) {
    AddHist(by_label[{kOverflowCgroupLabel, kAllCpus}], snapshot->overflow);
  }

  auto per_cgroup = MakeFamily(
      "kpulse_runqueue_latency_seconds",
      "Time runnable threads waited for a CPU, per wait, by the cgroup of the thread that waited.",
      MetricType::Histogram);
  for (const auto& [labels, hist] : by_label) {
    std::vector<ClientMetric::Label> label_set = {{"cgroup", labels.first}};
    if (config_.per_cpu) {
      label_set.push_back(
          {"cpu", labels.second == kAllCpus ? "<other>" : std::to_string(labels.second)});
    }
    AddHistogram(per_cgroup, std::move(label_set), hist);
  }
  families.push_back(std::move(per_cgroup));

  auto node_family = MakeFamily("kpulse_node_runqueue_latency_seconds",
                                "Time runnable threads waited for a CPU, per wait, whole node.",
                                MetricType::Histogram);
  AddHistogram(node_family, {}, node);
  families.push_back(std::move(node_family));

  for (auto& family : MapFillFamilies({{"runq_hists", snapshot->cgroups, snapshot->capacity}})) {
    families.push_back(std::move(family));
  }

  auto drops = MakeFamily("kpulse_runqueue_start_drops_total",
                          "wakeup hook: runnable threads whose wait could not be timed because "
                          "the start map was full (probes.runqueue_latency.max_tasks).",
                          MetricType::Counter);
  AddSample(drops, {}, static_cast<double>(snapshot->start_drops));
  families.push_back(std::move(drops));

  families.push_back(read_errors_.Family());
  return families;
}

}  // namespace kpulse
