#include "collect/retrans_collector.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "fakes.h"

namespace kpulse {
namespace {

using test::FakeRetransSource;
using test::Paths;

using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

retrans_flow_key V4Flow(const char* laddr, uint16_t lport, const char* raddr, uint16_t rport,
                        uint32_t kind, uint32_t netns = 4026531840u) {
  retrans_flow_key key{};
  key.family = AF_INET;
  inet_pton(AF_INET, laddr, key.laddr);
  inet_pton(AF_INET, raddr, key.raddr);
  key.lport = lport;
  key.rport = rport;
  key.kind = static_cast<uint8_t>(kind);
  key.netns_ino = netns;
  return key;
}

retrans_flow_key V6Flow(const char* laddr, uint16_t lport, const char* raddr, uint16_t rport,
                        uint32_t kind) {
  retrans_flow_key key{};
  key.family = AF_INET6;
  inet_pton(AF_INET6, laddr, key.laddr);
  inet_pton(AF_INET6, raddr, key.raddr);
  key.lport = lport;
  key.rport = rport;
  key.kind = static_cast<uint8_t>(kind);
  return key;
}

// family name -> (label string -> value); empty labels are left out, as Prometheus does.
using Samples = std::map<std::string, double>;
std::map<std::string, Samples> Collect(const RetransCollector& collector) {
  std::map<std::string, Samples> result;
  for (const auto& family : collector.Collect()) {
    Samples& samples = result[family.name];
    for (const auto& metric : family.metric) {
      std::string labels;
      for (const auto& label : metric.label) {
        if (label.value.empty()) continue;
        labels += (labels.empty() ? "" : ",") + label.name + "=" + label.value;
      }
      samples[labels] = family.type == prometheus::MetricType::Counter ? metric.counter.value
                                                                       : metric.gauge.value;
    }
  }
  return result;
}

TEST(FormatFlow, Ipv4) {
  const FlowLabelValues labels = FormatFlow(V4Flow("10.0.0.1", 0, "10.0.0.2", 443, 0));
  EXPECT_EQ(labels.family, "ipv4");
  EXPECT_EQ(labels.laddr, "10.0.0.1");
  EXPECT_EQ(labels.lport, "0");
  EXPECT_EQ(labels.raddr, "10.0.0.2");
  EXPECT_EQ(labels.rport, "443");
}

TEST(FormatFlow, Ipv6) {
  const FlowLabelValues labels = FormatFlow(V6Flow("fd00::1", 8080, "2001:db8::2", 50000, 0));
  EXPECT_EQ(labels.family, "ipv6");
  EXPECT_EQ(labels.laddr, "fd00::1");
  EXPECT_EQ(labels.raddr, "2001:db8::2");
  EXPECT_EQ(labels.lport, "8080");
  EXPECT_EQ(labels.rport, "50000");
}

TEST(FormatFlow, V4MappedIpv6IsShownAsIpv4) {
  const FlowLabelValues labels =
      FormatFlow(V6Flow("::ffff:192.0.2.1", 0, "::ffff:192.0.2.9", 5432, 0));
  EXPECT_EQ(labels.family, "ipv4");
  EXPECT_EQ(labels.laddr, "192.0.2.1");
  EXPECT_EQ(labels.raddr, "192.0.2.9");
}

TEST(FormatFlow, MappedRemoteWithUnspecifiedLocalStaysIpv6) {
  // A dual-stack socket not yet bound to an address has laddr :: — not a v4 flow for sure.
  const FlowLabelValues labels = FormatFlow(V6Flow("::", 0, "::ffff:192.0.2.9", 80, 0));
  EXPECT_EQ(labels.family, "ipv6");
  EXPECT_EQ(labels.raddr, "::ffff:192.0.2.9");
}

TEST(RetransKindName, NamesEveryKind) {
  EXPECT_EQ(RetransKindName(RETRANS_KIND_SYN), "syn");
  EXPECT_EQ(RetransKindName(RETRANS_KIND_SYNACK), "synack");
  EXPECT_EQ(RetransKindName(RETRANS_KIND_DATA), "data");
  EXPECT_EQ(RetransKindName(7), "unknown");
}

TEST(RetransCollector, NodeTotalsPerKindFromPerCpuSums) {
  FakeRetransSource source;
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 14;
  source.snapshot.totals.segments[RETRANS_KIND_SYNACK] = 3;
  source.snapshot.totals.segments[RETRANS_KIND_DATA] = 250;
  RetransCollector collector(source, Paths({}), RetransConfig{});
  EXPECT_THAT(
      Collect(collector)["kpulse_tcp_retransmits_total"],
      UnorderedElementsAre(Pair("kind=syn", 14), Pair("kind=synack", 3), Pair("kind=data", 250)));
}

TEST(RetransCollector, FailuresOnlyWhenTheKernelReportsThem) {
  FakeRetransSource source;
  source.snapshot.totals.failures[RETRANS_KIND_DATA] = 5;
  RetransCollector collector(source, Paths({}), RetransConfig{});
  EXPECT_EQ(Collect(collector)["kpulse_tcp_retransmit_failures_total"]["kind=data"], 5);
  source.failures = false;
  EXPECT_EQ(Collect(collector).count("kpulse_tcp_retransmit_failures_total"), 0u);
}

TEST(RetransCollector, CgroupIdsBecomeLabelSetsAndRemovedOnesCountAsDeleted) {
  FakeRetransSource source;
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 12;
  source.snapshot.totals.segments[RETRANS_KIND_DATA] = 40;
  source.snapshot.cgroups = {
      {{100, RETRANS_KIND_SYN, 0}, {7}},
      {{200, RETRANS_KIND_SYN, 0}, {2}},  // deleted
      {{300, RETRANS_KIND_SYN, 0}, {3}},  // deleted
      {{100, RETRANS_KIND_DATA, 0}, {40}},
  };
  RetransCollector collector(source, Paths({{100, "/system.slice/nginx.service"}}),
                             RetransConfig{});
  auto families = Collect(collector);
  EXPECT_THAT(families["kpulse_tcp_cgroup_retransmits_total"],
              UnorderedElementsAre(
                  Pair("cgroup=/system.slice/nginx.service,unit=nginx.service,kind=syn", 7),
                  Pair("cgroup=/system.slice/nginx.service,unit=nginx.service,kind=data", 40)));
  // Removed cgroups' entries, while still in the map, count as deleted.
  EXPECT_THAT(
      families["kpulse_deleted_cgroups_tcp_retransmits_total"],
      UnorderedElementsAre(Pair("kind=syn", 5), Pair("kind=synack", 0), Pair("kind=data", 0)));
}

TEST(RetransCollector, CgroupMapOverflowIsAnOtherSeriesSoSumsMatchTotals) {
  FakeRetransSource source;
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 10;
  source.snapshot.totals.cgroup_overflow[RETRANS_KIND_SYN] = 4;
  source.snapshot.cgroups = {{{100, RETRANS_KIND_SYN, 0}, {6}}};
  RetransCollector collector(source, Paths({{100, "/a"}}), RetransConfig{});
  EXPECT_THAT(
      Collect(collector)["kpulse_tcp_cgroup_retransmits_total"],
      UnorderedElementsAre(Pair("cgroup=/a,kind=syn", 6), Pair("cgroup=<other>,kind=syn", 4)));
  EXPECT_EQ(Collect(collector)["kpulse_deleted_cgroups_tcp_retransmits_total"]["kind=syn"], 0);
}

TEST(RetransCollector, InvalidUtf8CgroupPathIsSanitised) {
  FakeRetransSource source;
  source.snapshot.cgroups = {{{100, RETRANS_KIND_SYN, 0}, {1}}};
  RetransCollector collector(source, Paths({{100, std::string("/bad\xff.service")}}),
                             RetransConfig{});
  EXPECT_THAT(Collect(collector)["kpulse_tcp_cgroup_retransmits_total"],
              ElementsAre(Pair("cgroup=/bad\xEF\xBF\xBD.service,unit=bad\xEF\xBF\xBD.service,"
                               "kind=syn",
                               1)));
}

TEST(RetransCollector, RemovedCgroupsCountsStayInItsSeriesWhileAFoldedSiblingLives) {
  // Depth 2 folds /a.slice/b.service/x and .../y into their ancestor /a.slice/b.service.
  FakeRetransSource source;
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 10;
  source.snapshot.cgroups = {{{1, RETRANS_KIND_SYN, 0}, {6}}, {{2, RETRANS_KIND_SYN, 0}, {4}}};
  std::map<uint64_t, std::string> paths = {{1, "/a.slice/b.service/x"},
                                           {2, "/a.slice/b.service/y"}};
  auto live = std::make_shared<std::map<uint64_t, std::string>>(paths);
  auto labeler = std::make_shared<const CgroupLabeler>(
      [live](uint64_t id) -> std::optional<std::string> {
        auto it = live->find(id);
        return it == live->end() ? std::nullopt : std::optional(it->second);
      },
      CgroupLabelPolicy{2, {}, {}});
  RetransCollector collector(source, labeler, RetransConfig{});
  const std::string series = "cgroup=/a.slice/b.service,unit=b.service,kind=syn";
  EXPECT_THAT(Collect(collector)["kpulse_tcp_cgroup_retransmits_total"],
              ElementsAre(Pair(series, 10)));
  // y is removed: first its entry is still in the map, then the sweep retires it.
  live->erase(2);
  EXPECT_THAT(Collect(collector)["kpulse_tcp_cgroup_retransmits_total"],
              ElementsAre(Pair(series, 10)));
  source.snapshot.cgroups = {{{1, RETRANS_KIND_SYN, 0}, {7}}};
  source.snapshot.retired = {{{2, RETRANS_KIND_SYN, 0}, {4}}};
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 11;
  auto families = Collect(collector);
  EXPECT_THAT(families["kpulse_tcp_cgroup_retransmits_total"], ElementsAre(Pair(series, 11)));
  EXPECT_EQ(families["kpulse_deleted_cgroups_tcp_retransmits_total"]["kind=syn"], 0);
  // x goes too: the whole series moves to the deleted totals.
  live->erase(1);
  source.snapshot.cgroups = {};
  source.snapshot.retired = {{{1, RETRANS_KIND_SYN, 0}, {7}}};
  families = Collect(collector);
  EXPECT_THAT(families["kpulse_tcp_cgroup_retransmits_total"], ElementsAre());
  EXPECT_EQ(families["kpulse_deleted_cgroups_tcp_retransmits_total"]["kind=syn"], 11);
}

TEST(RetransCollector, FullFlowLabels) {
  FakeRetransSource source;
  source.snapshot.flows = {{V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN), {9}}};
  RetransCollector collector(source, Paths({}), RetransConfig{});
  EXPECT_THAT(Collect(collector)["kpulse_tcp_flow_retransmits_total"],
              ElementsAre(Pair("family=ipv4,laddr=10.0.0.1,lport=0,raddr=10.0.0.2,rport=443,"
                               "kind=syn",
                               9)));
}

TEST(RetransCollector, RemoteFlowLabelsDropTheLocalEndpoint) {
  FakeRetransSource source;
  // The kernel zeroes the local side in remote mode; the collector must not show it.
  source.snapshot.flows = {{V4Flow("0.0.0.0", 0, "10.0.0.2", 443, RETRANS_KIND_DATA), {9}}};
  RetransConfig config;
  config.flow_labels = FlowLabels::kRemote;
  RetransCollector collector(source, Paths({}), config);
  EXPECT_THAT(Collect(collector)["kpulse_tcp_flow_retransmits_total"],
              ElementsAre(Pair("family=ipv4,raddr=10.0.0.2,rport=443,kind=data", 9)));
}

// Flows are aggregated by the key as exported: an IPv4 socket and a dual-stack socket (both ends
// v4-mapped) to the same peer are one series, their counts summed.
TEST(RetransCollector, V4AndV4MappedFlowsToOnePeerAreOneSeries) {
  FakeRetransSource source;
  source.snapshot.flows = {
      {V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN), {4}},
      {V6Flow("::ffff:10.0.0.1", 0, "::ffff:10.0.0.2", 443, RETRANS_KIND_SYN), {3}}};
  RetransCollector collector(source, Paths({}), RetransConfig{});
  EXPECT_THAT(
      Collect(collector)["kpulse_tcp_flow_retransmits_total"],
      ElementsAre(Pair("family=ipv4,laddr=10.0.0.1,lport=0,raddr=10.0.0.2,rport=443,kind=syn", 7)));
}

TEST(RetransCollector, NoFlowFamiliesWhenFlowLabelsNone) {
  FakeRetransSource source;
  RetransConfig config;
  config.flow_labels = FlowLabels::kNone;
  RetransCollector collector(source, Paths({}), config);
  const auto families = Collect(collector);
  EXPECT_EQ(families.count("kpulse_tcp_flow_retransmits_total"), 0u);
  EXPECT_EQ(families.count("kpulse_tcp_flows_evicted_total"), 0u);
  EXPECT_EQ(families.at("kpulse_bpf_map_capacity").count("map=retrans_flows"), 0u);
}

TEST(RetransCollector, SameFlowInTwoNamespacesIsOneSeriesUnlessNetnsLabelled) {
  FakeRetransSource source;
  source.snapshot.flows = {
      {V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN, 1111), {2}},
      {V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN, 2222), {3}},
  };
  RetransCollector merged(source, Paths({}), RetransConfig{});
  EXPECT_THAT(Collect(merged)["kpulse_tcp_flow_retransmits_total"],
              ElementsAre(Pair(::testing::_, 5)));
  RetransConfig config;
  config.netns_label = true;
  RetransCollector split(source, Paths({}), config);
  EXPECT_THAT(Collect(split)["kpulse_tcp_flow_retransmits_total"],
              UnorderedElementsAre(Pair(::testing::HasSubstr("netns=1111"), 2),
                                   Pair(::testing::HasSubstr("netns=2222"), 3)));
}

// A reload's export side: the next Collect() uses the new labels (depth folding) and netns_label,
// from the same kernel counts; the node totals are untouched.
TEST(RetransCollector, ReconfigureAppliesNewLabelsAndNetnsLabelToTheSameCounts) {
  FakeRetransSource source;
  source.snapshot.totals.segments[RETRANS_KIND_SYN] = 10;
  source.snapshot.cgroups = {{{100, RETRANS_KIND_SYN, 0}, {7}}, {{101, RETRANS_KIND_SYN, 0}, {3}}};
  source.snapshot.flows = {
      {V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN, 1111), {4}},
      {V4Flow("10.0.0.1", 0, "10.0.0.2", 443, RETRANS_KIND_SYN, 2222), {6}},
  };
  const std::map<uint64_t, std::string> paths = {{100, "/system.slice/nginx.service"},
                                                 {101, "/system.slice/cron.service"}};
  RetransCollector collector(source, Paths(paths), RetransConfig{});
  auto before = Collect(collector);
  EXPECT_EQ(before["kpulse_tcp_cgroup_retransmits_total"].size(), 2u);
  EXPECT_THAT(before["kpulse_tcp_flow_retransmits_total"], ElementsAre(Pair(::testing::_, 10)));

  RetransConfig config;
  config.netns_label = true;
  collector.Reconfigure(Paths(paths, CgroupLabelPolicy{1, {}, {}}), config, SeriesPolicy{});
  auto after = Collect(collector);
  EXPECT_THAT(after["kpulse_tcp_cgroup_retransmits_total"],
              ElementsAre(Pair(::testing::HasSubstr("cgroup=/system.slice,"), 10)));
  EXPECT_THAT(after["kpulse_tcp_flow_retransmits_total"],
              UnorderedElementsAre(Pair(::testing::HasSubstr("netns=1111"), 4),
                                   Pair(::testing::HasSubstr("netns=2222"), 6)));
  EXPECT_EQ(after["kpulse_tcp_retransmits_total"], before["kpulse_tcp_retransmits_total"]);
}

TEST(RetransCollector, EvictionsAreCreatedMinusLiveAndNeverDecrease) {
  FakeRetransSource source;
  source.snapshot.totals.flows_created = 48;
  source.snapshot.flows.resize(16);
  source.snapshot.flow_capacity = 16;
  RetransCollector collector(source, Paths({}), RetransConfig{});
  EXPECT_EQ(Collect(collector)["kpulse_tcp_flows_evicted_total"][""], 32);
  // A read that raced with an insert (entry visible, creation not yet counted) must not make
  // the counter go backwards.
  source.snapshot.flows.resize(17);
  EXPECT_EQ(Collect(collector)["kpulse_tcp_flows_evicted_total"][""], 32);
  EXPECT_EQ(Collect(collector)["kpulse_bpf_map_capacity"]["map=retrans_flows"], 16);
  EXPECT_EQ(Collect(collector)["kpulse_bpf_map_entries"]["map=retrans_flows"], 17);
}

TEST(RetransCollector, ReadErrorYieldsOnlyTheErrorCounter) {
  FakeRetransSource source;
  source.error = "batch lookup of BPF map 'retrans_flows' failed: Bad file descriptor";
  RetransCollector collector(source, Paths({}), RetransConfig{});
  auto families = Collect(collector);
  EXPECT_EQ(families.size(), 1u);
  EXPECT_EQ(families["kpulse_tcp_retransmit_read_errors_total"][""], 1);
  EXPECT_EQ(Collect(collector)["kpulse_tcp_retransmit_read_errors_total"][""], 2);
}

}  // namespace
}  // namespace kpulse
