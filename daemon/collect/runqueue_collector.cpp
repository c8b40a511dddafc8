#include "collect/runqueue_collector.h"

#include <spdlog/spdlog.h>

#include <cmath>

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

RunqueueCollector::RunqueueCollector(const RunqueueSource& source,
                                     std::shared_ptr<const CgroupLabeler> labeler,
                                     RunqueueProbeOptions config, SeriesPolicy series)
    : source_(source),
      labeler_(std::move(labeler)),
      config_(std::move(config)),
      series_("kpulse_runqueue_latency_seconds", series) {}

void RunqueueCollector::Reconfigure(std::shared_ptr<const CgroupLabeler> labeler,
                                    SeriesPolicy series) {
  std::lock_guard lock(mu_);
  labeler_ = std::move(labeler);
  series_.SetPolicy(series);
}

std::vector<MetricFamily> RunqueueCollector::Collect() const {
  std::vector<MetricFamily> families;
  std::lock_guard lock(mu_);
  const auto snapshot = read_errors_.Take([this] { return source_.RunqueueSnapshotNow(); });
  if (!snapshot) {
    families.push_back(read_errors_.Family());
    return families;
  }

  // Per cgroup label set (and CPU): the `sub` dimension is the CPU.
  using Entry = CgroupSeries<sched_hist>::Entry;
  const auto entries = [](const auto& hists) {
    std::vector<Entry> out;
    out.reserve(hists.size());
    for (const auto& [key, hist] : hists) out.push_back({key.cgroup_id, key.cpu, hist});
    return out;
  };
  std::vector<Entry> overflow;
  if (HistCount(snapshot->overflow) != 0) overflow.push_back({0, kAllCpus, snapshot->overflow});
  const auto result = series_.Update(entries(snapshot->hists), entries(snapshot->retired), overflow,
                                     *labeler_, std::chrono::steady_clock::now());
  const auto cpu_label = [&](std::vector<ClientMetric::Label>& labels, uint32_t cpu) {
    if (config_.per_cpu) {
      labels.push_back({"cpu", cpu == kAllCpus ? "<other>" : std::to_string(cpu)});
    }
  };

  auto per_cgroup = MakeFamily(
      "kpulse_runqueue_latency_seconds",
      "Time runnable threads waited for a CPU, per wait, by the cgroup of the thread that waited.",
      MetricType::Histogram);
  for (const auto& series : result.series) {
    std::vector<ClientMetric::Label> labels = CgroupLabelSet(*series.labels);
    cpu_label(labels, series.sub);
    AddHistogram(per_cgroup, std::move(labels), series.value);
  }
  families.push_back(std::move(per_cgroup));

  auto deleted = MakeFamily("kpulse_deleted_cgroups_runqueue_latency_seconds",
                            "Run-queue waits of threads in cgroups that have since been removed.",
                            MetricType::Histogram);
  sched_hist node{};
  for (const auto& [cpu, hist] : result.held) AddHist(node, hist);
  for (const auto& [cpu, hist] : result.deleted) {
    AddHist(node, hist);
    std::vector<ClientMetric::Label> labels;
    cpu_label(labels, cpu);
    AddHistogram(deleted, std::move(labels), hist);
  }
  if (result.deleted.empty()) {
    std::vector<ClientMetric::Label> labels;
    cpu_label(labels, kAllCpus);
    AddHistogram(deleted, std::move(labels), sched_hist{});
  }
  families.push_back(std::move(deleted));

  auto node_family = MakeFamily("kpulse_node_runqueue_latency_seconds",
                                "Time runnable threads waited for a CPU, per wait, whole node.",
                                MetricType::Histogram);
  AddHistogram(node_family, {}, node);
  families.push_back(std::move(node_family));
  families.push_back(SeriesFoldedFamily("kpulse_runqueue_latency_seconds", result.folded_total));

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
