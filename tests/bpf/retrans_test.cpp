// The retransmit probe against the kernel's own counters, read inside the namespace under test.
// Every test runs once per hook path (tp_btf, classic tracepoint), forced by config.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "config/config.h"
#include "bpf/retrans_probe.h"
#include "collect/retrans_collector.h"
#include "test_env.h"

namespace kpulse {

// Readable parameter names in failure messages.
void PrintTo(RetransHook hook, std::ostream* os) { *os << ToString(hook); }

namespace {

using test::Child;
using test::DropInitialSyns;
using test::FastSynRetries;
using test::NetNs;
using test::ReadTcpCounters;
using test::TcpCounters;
using test::TestCgroup;

// Segments per kind for the flows of one network namespace.
struct KindSums {
  uint64_t syn = 0, synack = 0, data = 0;
  uint64_t all() const { return syn + synack + data; }
};

KindSums FlowSums(const RetransSnapshot& snapshot, uint32_t netns_ino) {
  KindSums sums;
  for (const auto& [key, value] : snapshot.flows) {
    if (key.netns_ino != netns_ino) continue;
    if (key.kind == RETRANS_KIND_SYN) sums.syn += value.segments;
    if (key.kind == RETRANS_KIND_SYNACK) sums.synack += value.segments;
    if (key.kind == RETRANS_KIND_DATA) sums.data += value.segments;
  }
  return sums;
}

KindSums CgroupSums(const RetransSnapshot& snapshot, uint64_t cgroup_id) {
  KindSums sums;
  for (const auto& [key, value] : snapshot.cgroups) {
    if (key.cgroup_id != cgroup_id) continue;
    if (key.kind == RETRANS_KIND_SYN) sums.syn += value.segments;
    if (key.kind == RETRANS_KIND_SYNACK) sums.synack += value.segments;
    if (key.kind == RETRANS_KIND_DATA) sums.data += value.segments;
  }
  return sums;
}

uint64_t NodeTotal(const RetransSnapshot& snapshot) {
  uint64_t sum = 0;
  for (uint64_t segments : snapshot.totals.segments) sum += segments;
  return sum;
}

// One connect() = 1 SYN + `retries` retransmits at 1 s, 2 s, 4 s... (linear timeouts off).
class RetransProbeTest : public ::testing::TestWithParam<RetransHook> {
 protected:
  void SetUp() override { KPULSE_REQUIRE_ROOT(); }

  std::unique_ptr<RetransProbe> StartProbe(RetransConfig config = {}) {
    config.hook = GetParam();
    auto probe = RetransProbe::Start(config);
    EXPECT_EQ(probe->hook(), GetParam() == RetransHook::kTpBtf ? "tp_btf" : "tracepoint");
    return probe;
  }

  static RetransSnapshot Snapshot(const RetransProbe& probe) {
    auto snapshot = probe.Snapshot();
    if (!snapshot) ADD_FAILURE() << snapshot.error();
    return snapshot ? *snapshot : RetransSnapshot{};
  }
};

// Test 1 + 5: client SYNs to a port whose SYNs are dropped. Retransmits fire from the
// retransmit timer (softirq), yet the per-cgroup series must name the socket owner's cgroup.
TEST_P(RetransProbeTest, SynRetransmitsMatchTcpSynRetransAndOwnerCgroup) {
  NetNs ns("syn");
  TestCgroup cgroup("syn");
  FastSynRetries(ns, 2);
  ns.Nft(DropInitialSyns(5002));
  auto probe = StartProbe();

  const TcpCounters before = ReadTcpCounters(&ns);
  const TcpCounters host_before = ReadTcpCounters(nullptr);
  Child client(ns, &cgroup, [] { return test::ConnectMany("127.0.0.1", 5002, 4, 10000); });
  EXPECT_EQ(client.Wait(), 4) << "every connect should time out";
  const TcpCounters after = ReadTcpCounters(&ns);
  const TcpCounters host_after = ReadTcpCounters(nullptr);
  const RetransSnapshot snapshot = Snapshot(*probe);

  const uint64_t kernel_syn = after.syn_retrans - before.syn_retrans;
  EXPECT_EQ(kernel_syn, 8u) << "4 connects x tcp_syn_retries=2 (test setup check)";
  const KindSums flows = FlowSums(snapshot, ns.inode());
  EXPECT_EQ(flows.syn, kernel_syn);
  EXPECT_EQ(flows.all(), after.retrans_segs - before.retrans_segs);
  const KindSums cgroup_sums = CgroupSums(snapshot, cgroup.id());
  EXPECT_EQ(cgroup_sums.syn, kernel_syn);
  EXPECT_EQ(cgroup_sums.all(), kernel_syn);

  // Node totals cover every namespace: the test namespace plus the host's (others are idle).
  EXPECT_EQ(snapshot.totals.segments[RETRANS_KIND_SYN],
            kernel_syn + (host_after.syn_retrans - host_before.syn_retrans));

  // Four ephemeral source ports fold into one flow series.
  size_t flows_in_ns = 0;
  for (const auto& [key, value] : snapshot.flows) {
    if (key.netns_ino != ns.inode()) continue;
    ++flows_in_ns;
    const FlowLabelValues labels = FormatFlow(key);
    EXPECT_EQ(labels.family, "ipv4");
    EXPECT_EQ(labels.laddr, "127.0.0.1");
    EXPECT_EQ(labels.lport, "0");
    EXPECT_EQ(labels.raddr, "127.0.0.1");
    EXPECT_EQ(labels.rport, "5002");
  }
  EXPECT_EQ(flows_in_ns, 1u);

  // And the collector turns the owner's cgroup id into its path.
  RetransCollector collector(*probe,
                             std::make_shared<const CgroupLabeler>(
                                 [&](uint64_t id) -> std::optional<std::string> {
                                   if (id == cgroup.id()) return cgroup.path();
                                   return std::nullopt;
                                 }),
                             RetransConfig{});
  bool found = false;
  for (const auto& family : collector.Collect()) {
    if (family.name != "kpulse_tcp_cgroup_retransmits_total") continue;
    for (const auto& metric : family.metric) {
      if (metric.label[0].value == cgroup.path() && metric.label.back().value == "syn") {
        EXPECT_EQ(metric.counter.value, static_cast<double>(kernel_syn));
        found = true;
      }
    }
  }
  EXPECT_TRUE(found) << "no cgroup series for " << cgroup.path();
}

// Test 4: the same over IPv6.
TEST_P(RetransProbeTest, Ipv6SynRetransmitsMatchTcpSynRetrans) {
  NetNs ns("syn6");
  FastSynRetries(ns, 1);  // the sysctl is shared by IPv4 and IPv6
  ns.Nft(DropInitialSyns(5003));
  auto probe = StartProbe();

  const TcpCounters before = ReadTcpCounters(&ns);
  Child client(ns, nullptr, [] { return test::ConnectMany("::1", 5003, 3, 10000); });
  EXPECT_EQ(client.Wait(), 3);
  const TcpCounters after = ReadTcpCounters(&ns);
  const RetransSnapshot snapshot = Snapshot(*probe);

  const uint64_t kernel_syn = after.syn_retrans - before.syn_retrans;
  EXPECT_EQ(kernel_syn, 3u) << "3 connects x tcp_syn_retries=1 (test setup check)";
  EXPECT_EQ(FlowSums(snapshot, ns.inode()).syn, kernel_syn);
  for (const auto& [key, value] : snapshot.flows) {
    if (key.netns_ino != ns.inode()) continue;
    const FlowLabelValues labels = FormatFlow(key);
    EXPECT_EQ(labels.family, "ipv6");
    EXPECT_EQ(labels.raddr, "::1");
    EXPECT_EQ(labels.rport, "5003");
  }
}

// Test 2: server SYN-ACKs lost on the way back; counted in the server's namespace.
TEST_P(RetransProbeTest, SynAckRetransmitsMatchServerTcpSynRetrans) {
  NetNs client_ns("sac"), server_ns("sas");
  TestCgroup server_cgroup("sas");
  test::ConnectWithVeth(client_ns, "10.213.1.1", server_ns, "10.213.1.2");
  FastSynRetries(client_ns, 1);
  server_ns.Sysctl("net.ipv4.tcp_synack_retries", "1");
  client_ns.Nft(test::NftDropInput("tcp sport 5004 tcp flags & (syn|ack) == syn|ack"));
  auto probe = StartProbe();

  test::ReadySignal listening;
  Child server(server_ns, &server_cgroup, [&] {
    if (test::ListenTcp("10.213.1.2", 5004, 16) < 0) return 10;
    listening.Signal();
    pause();  // killed by the test
    return 0;
  });
  ASSERT_TRUE(listening.Wait());

  const TcpCounters before = ReadTcpCounters(&server_ns);
  Child client(client_ns, nullptr, [] { return test::ConnectMany("10.213.1.2", 5004, 2, 10000); });
  EXPECT_EQ(client.Wait(), 2);
  // The request socket expires 3 s after the SYN (tcp_synack_retries=1: timeouts 1 s + 2 s).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const TcpCounters after = ReadTcpCounters(&server_ns);
  const RetransSnapshot snapshot = Snapshot(*probe);

  const uint64_t kernel_synack = after.syn_retrans - before.syn_retrans;
  EXPECT_GE(kernel_synack, 2u) << "each lost SYN-ACK is retransmitted at least once (setup)";
  const KindSums flows = FlowSums(snapshot, server_ns.inode());
  EXPECT_EQ(flows.synack, kernel_synack);
  EXPECT_EQ(flows.all(), after.retrans_segs - before.retrans_segs);
  EXPECT_EQ(CgroupSums(snapshot, server_cgroup.id()).synack, kernel_synack)
      << "SYN-ACK retransmits belong to the listener's cgroup";
  for (const auto& [key, value] : snapshot.flows) {
    if (key.netns_ino != server_ns.inode()) continue;
    const FlowLabelValues labels = FormatFlow(key);
    EXPECT_EQ(labels.laddr, "10.213.1.2");
    EXPECT_EQ(labels.lport, "5004");
    EXPECT_EQ(labels.raddr, "10.213.1.1");
    EXPECT_EQ(labels.rport, "0") << "a server folds its clients' ephemeral ports";
  }
  size_t server_flows = 0;
  for (const auto& [key, value] : snapshot.flows)
    server_flows += key.netns_ino == server_ns.inode();
  EXPECT_EQ(server_flows, 1u) << "two clients' connects from two ports: one server-side series";
}

// Test 3: data segments dropped mid-stream (every 10th data packet at the receiver); the
// sender's RetransSegs counts segments (TSO/GSO), and so must kpulse.
TEST_P(RetransProbeTest, DataRetransmitSegmentsMatchRetransSegs) {
  NetNs sender_ns("dts"), receiver_ns("dtr");
  test::ConnectWithVeth(sender_ns, "10.213.2.1", receiver_ns, "10.213.2.2");
  receiver_ns.Nft(test::NftDropInput("tcp dport 5005 meta length > 200 numgen inc mod 10 0"));
  auto probe = StartProbe();

  test::ReadySignal listening;
  Child receiver(receiver_ns, nullptr, [&] {
    const int fd = test::ListenTcp("10.213.2.2", 5005, 1);
    if (fd < 0) return 10;
    listening.Signal();
    const int conn = accept(fd, nullptr, nullptr);
    char buffer[65536];
    while (read(conn, buffer, sizeof(buffer)) > 0) {
    }
    return 0;
  });
  ASSERT_TRUE(listening.Wait());

  const TcpCounters before = ReadTcpCounters(&sender_ns);
  Child sender(sender_ns, nullptr, [] {
    const int fd = test::ConnectTcp("10.213.2.2", 5005);
    if (fd < 0) return 20;
    static char chunk[65536];
    for (int i = 0; i < 64; ++i) {  // 4 MiB
      if (write(fd, chunk, sizeof(chunk)) != static_cast<ssize_t>(sizeof(chunk))) return 21;
    }
    shutdown(fd, SHUT_WR);
    char sink;
    while (read(fd, &sink, 1) > 0) {  // until the receiver has everything and closes
    }
    return 0;
  });
  EXPECT_EQ(sender.Wait(), 0);
  EXPECT_EQ(receiver.Wait(), 0);
  const TcpCounters after = ReadTcpCounters(&sender_ns);
  const RetransSnapshot snapshot = Snapshot(*probe);

  const uint64_t kernel_segs = after.retrans_segs - before.retrans_segs;
  EXPECT_GT(kernel_segs, 0u) << "the drop rule should force retransmits (setup)";
  const KindSums flows = FlowSums(snapshot, sender_ns.inode());
  EXPECT_EQ(flows.data, kernel_segs);
  EXPECT_EQ(flows.all(), kernel_segs);
  std::printf("data retransmits: kernel RetransSegs %llu, kpulse %llu\n",
              static_cast<unsigned long long>(kernel_segs),
              static_cast<unsigned long long>(flows.data));
}

// Folding and label modes act in the kernel: two probes attached at once, one keeping every
// local port, one keeping only the remote endpoint, see the same three connects differently.
TEST_P(RetransProbeTest, FoldingAndRemoteModeShapeTheKernelFlowKey) {
  NetNs ns("mode");
  FastSynRetries(ns, 1);
  ns.Nft(DropInitialSyns(5007));
  RetransConfig unfolded;
  unfolded.fold_ephemeral_ports = false;
  auto exact_ports = StartProbe(unfolded);
  RetransConfig remote;
  remote.flow_labels = FlowLabels::kRemote;
  auto remote_only = StartProbe(remote);

  Child client(ns, nullptr, [] { return test::ConnectMany("127.0.0.1", 5007, 3, 10000); });
  EXPECT_EQ(client.Wait(), 3);

  std::set<uint16_t> lports;
  for (const auto& [key, value] : Snapshot(*exact_ports).flows) {
    if (key.netns_ino != ns.inode()) continue;
    EXPECT_EQ(value.segments, 1u);
    lports.insert(key.lport);
  }
  EXPECT_EQ(lports.size(), 3u) << "three client connects, three distinct local ports";
  for (uint16_t port : lports) EXPECT_NE(port, 0);

  size_t remote_flows = 0;
  for (const auto& [key, value] : Snapshot(*remote_only).flows) {
    if (key.netns_ino != ns.inode()) continue;
    ++remote_flows;
    EXPECT_EQ(value.segments, 3u);
    EXPECT_EQ(key.lport, 0);
    EXPECT_EQ(FormatFlow(key).laddr, "0.0.0.0") << "local address zeroed in the kernel";
    EXPECT_EQ(key.rport, 5007);
  }
  EXPECT_EQ(remote_flows, 1u);
}

// A SYN dropped by the sender's own netfilter OUTPUT chain fails inside the kernel: the MIBs
// still count it (they are bumped before the IP layer), the tracepoint reports err = -EPERM on
// 6.17+, and kpulse counts a failure, not a retransmit. This pins down the documented difference.
TEST_P(RetransProbeTest, LocalOutputDropIsCountedAsFailureNotRetransmit) {
  NetNs ns("out");
  FastSynRetries(ns, 1);
  ns.Nft(test::NftDropOutput("tcp dport 5006 tcp flags & (syn|ack) == syn"));
  auto probe = StartProbe();
  if (!probe->reports_failures()) {
    GTEST_SKIP() << "this kernel's tcp_retransmit_skb tracepoint does not report failures "
                    "(before 6.17): failed attempts are invisible to any tracepoint user";
  }

  const TcpCounters before = ReadTcpCounters(&ns);
  Child client(ns, nullptr, [] { return test::ConnectMany("127.0.0.1", 5006, 2, 10000); });
  EXPECT_EQ(client.Wait(), 2);
  const TcpCounters after = ReadTcpCounters(&ns);
  const RetransSnapshot snapshot = Snapshot(*probe);

  EXPECT_EQ(after.syn_retrans - before.syn_retrans, 2u) << "the MIB counts the attempts (setup)";
  EXPECT_EQ(FlowSums(snapshot, ns.inode()).syn, 0u);
  EXPECT_GE(snapshot.totals.failures[RETRANS_KIND_SYN], 2u);
}

// Test 6: more distinct flows than the flow map holds. Totals stay exact; evictions are counted.
TEST_P(RetransProbeTest, BoundedFlowMapKeepsTotalsExactAndCountsEvictions) {
  constexpr int kFlows = 48;
  NetNs ns("lru");
  TestCgroup cgroup("lru");
  FastSynRetries(ns, 1);
  ns.Nft(test::NftDropInput("tcp dport 6000-6100 tcp flags & (syn|ack) == syn"));
  RetransConfig config;
  config.max_flows = 16;
  auto probe = StartProbe(config);

  const TcpCounters before = ReadTcpCounters(&ns);
  const TcpCounters host_before = ReadTcpCounters(nullptr);
  Child client(ns, &cgroup, [] {
    int failed = 0;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int i = 0; i < kFlows; ++i) {
      threads.emplace_back([i, &failures] {
        failures += test::ConnectMany("127.0.0.1", static_cast<uint16_t>(6000 + i), 1, 10000);
      });
    }
    for (auto& thread : threads) thread.join();
    failed = failures.load();
    return failed;
  });
  EXPECT_EQ(client.Wait(), kFlows);
  const TcpCounters after = ReadTcpCounters(&ns);
  const TcpCounters host_after = ReadTcpCounters(nullptr);
  const RetransSnapshot snapshot = Snapshot(*probe);

  const uint64_t kernel_syn = after.syn_retrans - before.syn_retrans;
  EXPECT_EQ(kernel_syn, static_cast<uint64_t>(kFlows)) << "one retransmit per connect (setup)";
  EXPECT_EQ(CgroupSums(snapshot, cgroup.id()).syn, kernel_syn);
  EXPECT_EQ(NodeTotal(snapshot), kernel_syn + (host_after.retrans_segs - host_before.retrans_segs));
  EXPECT_LE(snapshot.flows.size(), 16u);
  // Each of the kFlows distinct flows was inserted exactly once: live + evicted == kFlows.
  EXPECT_EQ(snapshot.totals.flows_created, static_cast<uint64_t>(kFlows));
  EXPECT_GT(snapshot.totals.flows_created - snapshot.flows.size(), 0u);
  EXPECT_EQ(snapshot.totals.flow_update_failures, 0u);
}

INSTANTIATE_TEST_SUITE_P(BothHooks, RetransProbeTest,
                         ::testing::Values(RetransHook::kTpBtf, RetransHook::kTracepoint),
                         [](const auto& param_info) {
                           return std::string(
                               param_info.param == RetransHook::kTpBtf ? "tp_btf" : "tracepoint");
                         });

}  // namespace
}  // namespace kpulse
