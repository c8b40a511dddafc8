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
    std::string out;
    out.reserve(15);
    for (int i = 0; i < 4; ++i) {
      char octet[3];
      if (i > 0) out.push_back('.');
      out.append(octet, std::to_chars(octet, octet + sizeof(octet), addr[i]).ptr);
    }
    return out;
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

RetransCollector::RetransCollector(const RetransSource& source,
                                   std::shared_ptr<const CgroupLabeler> labeler,
                                   RetransConfig config, SeriesPolicy series)
    : source_(source),
      labeler_(std::move(labeler)),
      config_(std::move(config)),
      cgroup_series_("kpulse_tcp_cgroup_retransmits_total", series),
      flow_limiter_("kpulse_tcp_flow_retransmits_total", series) {}

void RetransCollector::Reconfigure(std::shared_ptr<const CgroupLabeler> labeler,
                                   const RetransConfig& config, SeriesPolicy series) {
  std::lock_guard lock(mu_);
  labeler_ = std::move(labeler);
  cgroup_series_.SetPolicy(series);
  if (config.netns_label != config_.netns_label) {
    // Folded flows are keyed by their exported labels: start the flow side over. What left
    // <other> before stays in departed_folded_.
    flow_limiter_ =
        SeriesLimiter<retrans_flow_key, FlowLess>("kpulse_tcp_flow_retransmits_total", series);
    for (const auto& [flow, counts] : folded_flows_) {
      for (size_t kind = 0; kind < counts.size(); ++kind) departed_folded_[kind] += counts[kind];
    }
    folded_flows_.clear();
  } else {
    flow_limiter_.SetPolicy(series);
  }
  config_ = config;
}

std::vector<MetricFamily> RetransCollector::Collect() const {
  std::vector<MetricFamily> families;
  std::lock_guard lock(mu_);
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

  AddCgroupFamilies(*snapshot, families);
  if (config_.flow_labels != FlowLabels::kNone) AddFlowFamilies(*snapshot, families);

  std::vector<MapFill> fills = {
      {"retrans_cgroups", snapshot->cgroups.size(), snapshot->cgroup_capacity}};
  if (config_.flow_labels != FlowLabels::kNone) {
    fills.push_back({"retrans_flows", snapshot->flows.size(), snapshot->flow_capacity});
  }
  for (auto& family : MapFillFamilies(fills)) families.push_back(std::move(family));

  families.push_back(read_errors_.Family());
  return families;
}

void RetransCollector::AddCgroupFamilies(const RetransSnapshot& snapshot,
                                         std::vector<MetricFamily>& families) const {
  using Entry = CgroupSeries<uint64_t>::Entry;
  const auto entries = [](const auto& map_entries) {
    std::vector<Entry> out;
    out.reserve(map_entries.size());
    for (const auto& [key, value] : map_entries) {
      out.push_back({key.cgroup_id, key.kind, value.segments});
    }
    return out;
  };
  std::vector<Entry> overflow;
  for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
    if (snapshot.totals.cgroup_overflow[kind] != 0) {
      overflow.push_back({0, kind, snapshot.totals.cgroup_overflow[kind]});
    }
  }
  const auto result = cgroup_series_.Update(entries(snapshot.cgroups), entries(snapshot.retired),
                                            overflow, *labeler_, std::chrono::steady_clock::now());
  auto cgroup = MakeFamily("kpulse_tcp_cgroup_retransmits_total",
                           "TCP segments retransmitted, by the cgroup of the socket's owner.",
                           MetricType::Counter);
  for (const auto& series : result.series) {
    auto labels = CgroupLabelSet(*series.labels);
    labels.push_back({"kind", std::string(RetransKindName(series.sub))});
    AddSample(cgroup, std::move(labels), static_cast<double>(series.value));
  }
  families.push_back(std::move(cgroup));

  // Removed cgroups: the counts their entries held when the sweep took them out. A retransmit
  // racing with that removal (a socket of the removed cgroup, within nanoseconds) is in the node
  // totals only.
  auto deleted = MakeFamily("kpulse_deleted_cgroups_tcp_retransmits_total",
                            "TCP segments retransmitted by sockets of cgroups since removed.",
                            MetricType::Counter);
  for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
    auto it = result.deleted.find(kind);
    AddSample(deleted, {{"kind", std::string(RetransKindName(kind))}},
              static_cast<double>(it == result.deleted.end() ? 0 : it->second));
  }
  families.push_back(std::move(deleted));
  families.push_back(
      SeriesFoldedFamily("kpulse_tcp_cgroup_retransmits_total", result.folded_total));
}

void RetransCollector::AddFlowFamilies(const RetransSnapshot& snapshot,
                                       std::vector<MetricFamily>& families) const {
  // Aggregated by the binary key first (flows that differ only in what is not labelled add
  // up): formatting and comparing label strings per map entry took most of a 10k-flow scrape.
  // The identity of a flow series is its key without the kind; kinds are its series.
  std::map<retrans_flow_key, KindCounts, FlowLess> by_flow;
  for (const auto& [key, value] : snapshot.flows) {
    retrans_flow_key flow = ExportedFlow(key, config_);
    const uint8_t kind = flow.kind;
    if (kind >= RETRANS_KIND_MAX) continue;
    flow.kind = 0;
    by_flow[flow][kind] += value.segments;
  }
  std::vector<SeriesLimiter<retrans_flow_key, FlowLess>::Input> inputs;
  inputs.reserve(by_flow.size());
  for (const auto& [flow, counts] : by_flow) {
    uint64_t signature = 0;
    size_t series = 0;
    for (uint64_t count : counts) {
      signature = signature * 31 + count;
      series += count != 0 ? 1 : 0;
    }
    inputs.push_back({flow, signature, series});
  }
  const std::vector<SeriesFate> fates =
      flow_limiter_.Update(inputs, RETRANS_KIND_MAX, std::chrono::steady_clock::now());
  for (const auto& departed : flow_limiter_.departed()) {
    auto it = folded_flows_.find(departed.key);
    if (it == folded_flows_.end()) continue;
    for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind)
      departed_folded_[kind] += it->second[kind];
    folded_flows_.erase(it);
  }

  auto flows = MakeFamily("kpulse_tcp_flow_retransmits_total",
                          "TCP segments retransmitted, per flow (bounded LRU; ephemeral ports of "
                          "the client side folded to 0).",
                          MetricType::Counter);
  flows.metric.reserve(by_flow.size());
  KindCounts other = departed_folded_;
  size_t i = 0;
  for (const auto& [flow, counts] : by_flow) {
    const SeriesFate fate = fates[i++];
    if (fate == SeriesFate::kFolded) {
      folded_flows_[flow] = counts;
      for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) other[kind] += counts[kind];
      continue;
    }
    if (fate == SeriesFate::kHidden) continue;
    const FlowLabelValues labels = FormatFlow(flow);
    for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
      if (counts[kind] == 0) continue;
      std::vector<ClientMetric::Label> label_set;
      label_set.reserve(8);
      label_set.push_back({"family", labels.family});
      if (config_.flow_labels == FlowLabels::kFull) {
        label_set.push_back({"laddr", labels.laddr});
        label_set.push_back({"lport", labels.lport});
      }
      label_set.push_back({"raddr", labels.raddr});
      label_set.push_back({"rport", labels.rport});
      label_set.push_back({"kind", std::string(RetransKindName(kind))});
      if (config_.netns_label) label_set.push_back({"netns", std::to_string(flow.netns_ino)});
      AddSample(flows, std::move(label_set), static_cast<double>(counts[kind]));
    }
  }
  for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
    if (other[kind] == 0) continue;
    const std::string other_label(kOtherCgroup);
    std::vector<ClientMetric::Label> label_set = {{"family", other_label}};
    if (config_.flow_labels == FlowLabels::kFull) {
      label_set.push_back({"laddr", other_label});
      label_set.push_back({"lport", other_label});
    }
    label_set.push_back({"raddr", other_label});
    label_set.push_back({"rport", other_label});
    label_set.push_back({"kind", std::string(RetransKindName(kind))});
    if (config_.netns_label) label_set.push_back({"netns", other_label});
    AddSample(flows, std::move(label_set), static_cast<double>(other[kind]));
  }
  families.push_back(std::move(flows));
  families.push_back(
      SeriesFoldedFamily("kpulse_tcp_flow_retransmits_total", flow_limiter_.folded_total()));

  const retrans_totals& totals = snapshot.totals;
  const uint64_t live = snapshot.flows.size();
  const uint64_t derived = totals.flows_created > live ? totals.flows_created - live : 0;
  evicted_high_water_ = std::max(evicted_high_water_, derived);
  auto evictions = MakeFamily("kpulse_tcp_flows_evicted_total",
                              "Flow series evicted from the full flow map (their counts remain in "
                              "the node and cgroup totals).",
                              MetricType::Counter);
  AddSample(evictions, {}, static_cast<double>(evicted_high_water_));
  families.push_back(std::move(evictions));
  auto failures = MakeFamily("kpulse_tcp_flow_insert_failures_total",
                             "Retransmits whose flow entry could not be inserted (counted in the "
                             "node and cgroup totals only).",
                             MetricType::Counter);
  AddSample(failures, {}, static_cast<double>(totals.flow_update_failures));
  families.push_back(std::move(failures));
}

}  // namespace kpulse
