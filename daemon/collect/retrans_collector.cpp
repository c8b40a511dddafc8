#include "collect/retrans_collector.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstring>
#include <map>

#include "collect/family_builder.h"

namespace kpulse {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr int kAfInet = 2;
constexpr int kAfInet6 = 10;

bool IsV4Mapped(const uint8_t* addr) {
  static constexpr std::array<uint8_t, 12> kPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(addr, kPrefix.data(), kPrefix.size()) == 0;
}

std::string FormatAddress(int family, const uint8_t* addr) {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, addr, text, sizeof(text));
  return text;
}

}  // namespace

FlowLabelValues FormatFlow(const retrans_flow_key& key) {
  FlowLabelValues labels;
  int family = key.family == kAfInet6 ? kAfInet6 : kAfInet;
  const uint8_t* laddr = key.laddr;
  const uint8_t* raddr = key.raddr;
  if (family == kAfInet6 && IsV4Mapped(key.raddr) && (IsV4Mapped(key.laddr))) {
    family = kAfInet;
    laddr += 12;
    raddr += 12;
  }
  labels.family = family == kAfInet6 ? "ipv6" : "ipv4";
  labels.laddr = FormatAddress(family, laddr);
  labels.raddr = FormatAddress(family, raddr);
  labels.lport = std::to_string(key.lport);
  labels.rport = std::to_string(key.rport);
  return labels;
}

std::string_view RetransKindName(uint32_t kind) {
  switch (kind) {
    case RETRANS_KIND_SYN:
      return "syn";
    case RETRANS_KIND_SYNACK:
      return "synack";
    case RETRANS_KIND_DATA:
      return "data";
    default:
      return "unknown";
  }
}

RetransCollector::RetransCollector(const RetransSource& source, CgroupPathLookup cgroup_path,
                                   RetransConfig config)
    : source_(source), cgroup_path_(std::move(cgroup_path)), config_(std::move(config)) {}

std::vector<MetricFamily> RetransCollector::Collect() const {
  std::vector<MetricFamily> families;
  const auto snapshot = read_errors_.Take([this] { return source_.Snapshot(); });
  if (!snapshot) {
    families.push_back(read_errors_.Family());
    return families;
  }
  const retrans_totals& totals = snapshot->totals;

  auto node = MakeFamily("kpulse_tcp_retransmits_total",
                         "TCP segments retransmitted on this node, all network namespaces "
                         "(syn + synack = TcpExt TCPSynRetrans; all kinds = Tcp RetransSegs).",
                         MetricType::Counter);
  for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
    AddSample(node, {{"kind", std::string(RetransKindName(kind))}},
              static_cast<double>(totals.segments[kind]));
  }
  families.push_back(std::move(node));

  if (source_.reports_failures()) {
    auto failures = MakeFamily("kpulse_tcp_retransmit_failures_total",
                               "Retransmit attempts the kernel reported as failed (e.g. EBUSY: the "
                               "original still queued in the host); not counted as retransmits.",
                               MetricType::Counter);
    for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
      AddSample(failures, {{"kind", std::string(RetransKindName(kind))}},
                static_cast<double>(totals.failures[kind]));
    }
    families.push_back(std::move(failures));
  }

  // Per cgroup. Several ids can share a label (deleted cgroups), so sum by label first.
  std::map<std::pair<std::string, uint32_t>, uint64_t> by_cgroup;
  for (const auto& [key, value] : snapshot->cgroups) {
    std::string label = CgroupLabel(cgroup_path_, key.cgroup_id);
    by_cgroup[{std::move(label), key.kind}] += value.segments;
  }
  for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
    if (totals.cgroup_overflow[kind] != 0) {
      by_cgroup[{kOverflowCgroupLabel, kind}] += totals.cgroup_overflow[kind];
    }
  }
  auto cgroup =
      MakeFamily("kpulse_tcp_cgroup_retransmits_total",
                 "TCP segments retransmitted, by the cgroup v2 path of the socket's owner.",
                 MetricType::Counter);
  for (const auto& [labels, segments] : by_cgroup) {
    AddSample(cgroup,
              {{"cgroup", labels.first}, {"kind", std::string(RetransKindName(labels.second))}},
              static_cast<double>(segments));
  }
  families.push_back(std::move(cgroup));

  if (config_.flow_labels != FlowLabels::kNone) {
    std::map<std::vector<std::string>, uint64_t> by_flow;
    for (const auto& [key, value] : snapshot->flows) {
      FlowLabelValues flow = FormatFlow(key);
      std::vector<std::string> labels = {flow.family};
      if (config_.flow_labels == FlowLabels::kFull) {
        labels.push_back(flow.laddr);
        labels.push_back(flow.lport);
      }
      labels.push_back(flow.raddr);
      labels.push_back(flow.rport);
      labels.emplace_back(RetransKindName(key.kind));
      if (config_.netns_label) labels.push_back(std::to_string(key.netns_ino));
      by_flow[std::move(labels)] += value.segments;
    }
    std::vector<std::string> names = {"family"};
    if (config_.flow_labels == FlowLabels::kFull) names.insert(names.end(), {"laddr", "lport"});
    names.insert(names.end(), {"raddr", "rport", "kind"});
    if (config_.netns_label) names.push_back("netns");

    auto flows = MakeFamily("kpulse_tcp_flow_retransmits_total",
                            "TCP segments retransmitted, per flow (bounded LRU; ephemeral local "
                            "ports folded to 0).",
                            MetricType::Counter);
    for (const auto& [values, segments] : by_flow) {
      std::vector<ClientMetric::Label> labels;
      for (size_t i = 0; i < names.size(); ++i) labels.push_back({names[i], values[i]});
      AddSample(flows, std::move(labels), static_cast<double>(segments));
    }
    families.push_back(std::move(flows));

    const uint64_t live = snapshot->flows.size();
    const uint64_t derived = totals.flows_created > live ? totals.flows_created - live : 0;
    uint64_t evicted = evicted_high_water_.load();
    while (derived > evicted && !evicted_high_water_.compare_exchange_weak(evicted, derived)) {
    }
    evicted = std::max(evicted, derived);
    auto evictions =
        MakeFamily("kpulse_tcp_flows_evicted_total",
                   "Flow series evicted from the full flow map (their counts remain in "
                   "the node and cgroup totals).",
                   MetricType::Counter);
    AddSample(evictions, {}, static_cast<double>(evicted));
    families.push_back(std::move(evictions));
    auto failures = MakeFamily("kpulse_tcp_flow_insert_failures_total",
                               "Retransmits whose flow entry could not be inserted (counted in the "
                               "node and cgroup totals only).",
                               MetricType::Counter);
    AddSample(failures, {}, static_cast<double>(totals.flow_update_failures));
    families.push_back(std::move(failures));
  }

  std::vector<MapFill> fills = {
      {"retrans_cgroups", snapshot->cgroups.size(), snapshot->cgroup_capacity}};
  if (config_.flow_labels != FlowLabels::kNone) {
    fills.push_back({"retrans_flows", snapshot->flows.size(), snapshot->flow_capacity});
  }
  for (auto& family : MapFillFamilies(fills)) families.push_back(std::move(family));

  families.push_back(read_errors_.Family());
  return families;
}

}  // namespace kpulse
