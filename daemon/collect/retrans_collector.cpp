#include "collect/retrans_collector.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <charconv>
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
  if (family == kAfInet) {
    // glibc's inet_ntop formats IPv4 with sprintf (2 of the 13 ms of collecting 10k flows).
    char* end = text;
    for (int i = 0; i < 4; ++i) {
      if (i > 0) *end++ = '.';
      end = std::to_chars(end, text + sizeof(text), addr[i]).ptr;
    }
    return std::string(text, end);
  }
  inet_ntop(family, addr, text, sizeof(text));
  return text;
}

}  // namespace

retrans_flow_key ExportedFlow(const retrans_flow_key& key, const RetransConfig& config) {
  const bool v4_mapped = key.family == kAfInet6 && IsV4Mapped(key.raddr) && IsV4Mapped(key.laddr);
  retrans_flow_key out{};
  out.family = key.family == kAfInet6 && !v4_mapped ? kAfInet6 : kAfInet;
  out.kind = key.kind;
  out.rport = key.rport;
  const size_t offset = v4_mapped ? 12 : 0;  // a v4-mapped address's IPv4 part
  const size_t address_bytes = out.family == kAfInet6 ? 16 : 4;
  std::memcpy(out.raddr, key.raddr + offset, address_bytes);
  if (config.flow_labels == FlowLabels::kFull) {
    std::memcpy(out.laddr, key.laddr + offset, address_bytes);
    out.lport = key.lport;
  }
  if (config.netns_label) out.netns_ino = key.netns_ino;
  return out;
}

FlowLabelValues FormatFlow(const retrans_flow_key& key) {
  RetransConfig full;
  full.flow_labels = FlowLabels::kFull;
  const retrans_flow_key flow = ExportedFlow(key, full);
  FlowLabelValues labels;
  labels.family = flow.family == kAfInet6 ? "ipv6" : "ipv4";
  labels.laddr = FormatAddress(flow.family, flow.laddr);
  labels.raddr = FormatAddress(flow.family, flow.raddr);
  labels.lport = std::to_string(flow.lport);
  labels.rport = std::to_string(flow.rport);
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
    // Aggregated by the binary key first (flows that differ only in what is not labelled add
    // up): formatting and comparing label strings per map entry took most of a 10k-flow scrape.
    std::vector<std::pair<retrans_flow_key, uint64_t>> by_flow;
    by_flow.reserve(snapshot->flows.size());
    for (const auto& [key, value] : snapshot->flows) {
      by_flow.emplace_back(ExportedFlow(key, config_), value.segments);
    }
    auto less = [](const auto& a, const auto& b) {
      return std::memcmp(&a.first, &b.first, sizeof(a.first)) < 0;
    };
    std::sort(by_flow.begin(), by_flow.end(), less);
    size_t merged = 0;  // flows with equal exported keys add up
    for (size_t i = 0; i < by_flow.size(); ++i) {
      if (merged > 0 && !less(by_flow[merged - 1], by_flow[i])) {
        by_flow[merged - 1].second += by_flow[i].second;
      } else {
        by_flow[merged++] = by_flow[i];
      }
    }
    by_flow.resize(merged);
    auto flows = MakeFamily("kpulse_tcp_flow_retransmits_total",
                            "TCP segments retransmitted, per flow (bounded LRU; ephemeral local "
                            "ports folded to 0).",
                            MetricType::Counter);
    flows.metric.reserve(by_flow.size());
    for (const auto& [key, segments] : by_flow) {
      FlowLabelValues flow = FormatFlow(key);
      std::vector<ClientMetric::Label> labels;
      labels.reserve(8);
      labels.push_back({"family", std::move(flow.family)});
      if (config_.flow_labels == FlowLabels::kFull) {
        labels.push_back({"laddr", std::move(flow.laddr)});
        labels.push_back({"lport", std::move(flow.lport)});
      }
      labels.push_back({"raddr", std::move(flow.raddr)});
      labels.push_back({"rport", std::move(flow.rport)});
      labels.push_back({"kind", std::string(RetransKindName(key.kind))});
      if (config_.netns_label) labels.push_back({"netns", std::to_string(key.netns_ino)});
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
