#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>

#include <string>
#include <utility>
#include <vector>

#include "cgroup/cgroup_labels.h"

namespace kpulse {

/// The labels of a cgroup series: `cgroup` always, the others where they apply. An empty label is
/// the same as an absent one to Prometheus; leaving them out keeps a 100k-series page 5 MiB
/// smaller (docs/benchmarks.md).
inline std::vector<prometheus::ClientMetric::Label> CgroupLabelSet(const CgroupLabels& labels) {
  std::vector<prometheus::ClientMetric::Label> out;
  out.reserve(6);  // and one for the family's own dimension
  out.push_back({"cgroup", labels.cgroup});
  for (const auto& [name, value] :
       {std::pair<const char*, const std::string*>{"unit", &labels.unit},
        {"container_id", &labels.container_id},
        {"pod_uid", &labels.pod_uid},
        {"qos", &labels.qos}}) {
    if (!value->empty()) out.push_back({name, *value});
  }
  return out;
}

/// kpulse_series_folded_total{family}: label sets (cgroups, flows) folded into <other> by the
/// series cap. Several collectors report into it (merged by the /metrics endpoint).
inline prometheus::MetricFamily SeriesFoldedFamily(const std::string& family, uint64_t folded) {
  prometheus::MetricFamily out;
  out.name = "kpulse_series_folded_total";
  out.help =
      "Cgroups or flows folded into the <other> series of a family because it reached "
      "series.max_series_per_family.";
  out.type = prometheus::MetricType::Counter;
  prometheus::ClientMetric metric;
  metric.label = {{"family", family}};
  metric.counter.value = static_cast<double>(folded);
  out.metric.push_back(std::move(metric));
  return out;
}

/// Small helpers to build prometheus::MetricFamily values by hand in collectors. prometheus-cpp
/// validates nothing here: names must be valid metric names and HELP must be one line.
inline prometheus::MetricFamily MakeFamily(std::string name, std::string help,
                                           prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

/// Appends a counter or gauge sample (by the family's type).
inline void AddSample(prometheus::MetricFamily& family,
                      std::vector<prometheus::ClientMetric::Label> labels, double value) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

/// Fill of one kpulse BPF map, for the shared kpulse_bpf_map_{entries,capacity} families. Counted
/// in what fills it: entries for hash maps, cgroup slots for the scheduler's histogram arrays.
struct MapFill {
  std::string map;
  size_t entries;
  uint32_t capacity;
};

/// kpulse_bpf_map_entries and kpulse_bpf_map_capacity for `maps`. Several collectors report into
/// these families; the /metrics endpoint merges families of the same name.
inline std::vector<prometheus::MetricFamily> MapFillFamilies(const std::vector<MapFill>& maps) {
  auto entries = MakeFamily("kpulse_bpf_map_entries", "Entries in a kpulse BPF map at scrape time.",
                            prometheus::MetricType::Gauge);
  auto capacity = MakeFamily("kpulse_bpf_map_capacity", "max_entries of a kpulse BPF map.",
                             prometheus::MetricType::Gauge);
  for (const MapFill& fill : maps) {
    AddSample(entries, {{"map", fill.map}}, static_cast<double>(fill.entries));
    AddSample(capacity, {{"map", fill.map}}, fill.capacity);
  }
  return {std::move(entries), std::move(capacity)};
}

}  // namespace kpulse
