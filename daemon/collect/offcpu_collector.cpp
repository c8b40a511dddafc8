#include "collect/offcpu_collector.h"

#include <spdlog/spdlog.h>

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

OffcpuCollector::OffcpuCollector(const OffcpuSource& source,
                                 std::shared_ptr<const CgroupLabeler> labeler, SeriesPolicy series)
    : source_(source),
      labeler_(std::move(labeler)),
      series_("kpulse_offcpu_seconds_total", series) {}

void OffcpuCollector::Reconfigure(std::shared_ptr<const CgroupLabeler> labeler,
                                  SeriesPolicy series) {
  std::lock_guard lock(mu_);
  labeler_ = std::move(labeler);
  series_.SetPolicy(series);
}

std::vector<MetricFamily> OffcpuCollector::Collect() const {
  std::vector<MetricFamily> families;
  std::lock_guard lock(mu_);
  const auto snapshot = read_errors_.Take([this] { return source_.OffcpuSnapshotNow(); });
  if (!snapshot) {
    families.push_back(read_errors_.Family());
    return families;
  }

  // Per cgroup label set and state (the `sub` dimension).
  using Entry = CgroupSeries<sched_hist>::Entry;
  const auto entries = [](const auto& hists) {
    std::vector<Entry> out;
    out.reserve(hists.size());
    for (const auto& [key, hist] : hists) out.push_back({key.cgroup_id, key.state, hist});
    return out;
  };
  std::vector<Entry> overflow;
  for (uint32_t state = 0; state < OFFCPU_STATE_MAX; ++state) {
    if (HistCount(snapshot->overflow[state]) != 0) {
      overflow.push_back({0, state, snapshot->overflow[state]});
    }
  }
  const auto result = series_.Update(entries(snapshot->hists), entries(snapshot->retired), overflow,
                                     *labeler_, std::chrono::steady_clock::now());

  auto seconds = MakeFamily("kpulse_offcpu_seconds_total",
                            "Time threads spent blocked (off-CPU, not runnable), by the cgroup of "
                            "the thread and the state it blocked in.",
                            MetricType::Counter);
  auto durations = MakeFamily("kpulse_offcpu_block_duration_seconds",
                              "Durations of blocked (off-CPU) intervals, by cgroup and state.",
                              MetricType::Histogram);
  const auto add = [](MetricFamily& counter, MetricFamily& histogram,
                      std::vector<ClientMetric::Label> labels, uint32_t state,
                      const sched_hist& hist) {
    labels.push_back({"state", std::string(OffcpuStateName(state))});
    AddSample(counter, labels, static_cast<double>(hist.sum_ns) / 1e9);
    ClientMetric metric;
    metric.label = std::move(labels);
    metric.histogram = ToPrometheusHistogram(hist);
    histogram.metric.push_back(std::move(metric));
  };
  for (const auto& series : result.series) {
    add(seconds, durations, CgroupLabelSet(*series.labels), series.sub, series.value);
  }
  families.push_back(std::move(seconds));
  families.push_back(std::move(durations));

  auto deleted_seconds =
      MakeFamily("kpulse_deleted_cgroups_offcpu_seconds_total",
                 "Time threads of cgroups that have since been removed spent blocked, by state.",
                 MetricType::Counter);
  auto deleted_durations =
      MakeFamily("kpulse_deleted_cgroups_offcpu_block_duration_seconds",
                 "Durations of blocked intervals of threads in cgroups since removed, by state.",
                 MetricType::Histogram);
  for (uint32_t state = 0; state < OFFCPU_STATE_MAX; ++state) {
    auto it = result.deleted.find(state);
    add(deleted_seconds, deleted_durations, {}, state,
        it == result.deleted.end() ? sched_hist{} : it->second);
  }
  families.push_back(std::move(deleted_seconds));
  families.push_back(std::move(deleted_durations));
  families.push_back(SeriesFoldedFamily("kpulse_offcpu_seconds_total", result.folded_total));

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
