// A node that has lived: cgroups created and removed by the thousand, slots recycled, and every
// count still equal to the kernel's own (schedstat per task, TcpExt TCPSynRetrans per netns).
// Processes are started inside their cgroup with clone3(CLONE_INTO_CGROUP), so their whole life
// (from fork on, which kpulse counts for tasks started after load) belongs to it.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <thread>

#include "config/config.h"
#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "cgroup/cgroup_resolver.h"
#include "collect/bpf_program_collector.h"
#include "collect/offcpu_collector.h"
#include "collect/retrans_collector.h"
#include "collect/runqueue_collector.h"
#include "sched_test_env.h"
#include "service/cgroup_sweeper.h"
#include "test_env.h"

namespace kpulse {

void PrintTo(SchedHook hook, std::ostream* os);

namespace {

using namespace std::chrono_literals;
using test::NetNs;
using test::SchedStat;
using test::TestCgroup;

constexpr uint16_t kBlackholePort = 5010;

// ---- processes born in a cgroup ----

// What a worker measured of itself: blocked time = wall - on-CPU - run-queue wait, from its first
// instruction (a task cannot block before it first runs) to just before its final block.
struct WorkerTruth {
  int64_t blocked_ns;
  int32_t connect_failed;  // 1 when its connect timed out after its SYN retransmits
  int32_t pad;
};

int64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

// The calling thread's schedstat with plain syscalls (no allocation: safe after clone3).
SchedStat OwnSchedStat() {
  SchedStat out;
  const int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  char text[128] = {};
  const ssize_t n = fd >= 0 ? read(fd, text, sizeof(text) - 1) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) return out;
  uint64_t* fields[] = {&out.exec_ns, &out.run_delay_ns, &out.pcount};
  const char* p = text;
  for (uint64_t* field : fields) {
    while (*p == ' ') ++p;
    while (*p >= '0' && *p <= '9') *field = *field * 10 + static_cast<uint64_t>(*p++ - '0');
  }
  return out;
}

void Spin(std::chrono::microseconds duration) {
  const int64_t end = MonotonicNs() + duration.count() * 1000;
  while (MonotonicNs() < end) {
  }
}

// A connect to a port whose SYNs are dropped, inside `netns_fd`, waited for until it fails.
int32_t BlackholedConnect(int netns_fd) {
  if (setns(netns_fd, CLONE_NEWNET) != 0) return 0;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(kBlackholePort);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  pollfd pfd{fd, POLLOUT, 0};
  poll(&pfd, 1, 10000);
  int error = 0;
  socklen_t len = sizeof(error);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
  close(fd);
  return error == ETIMEDOUT ? 1 : 0;
}

// Starts a process inside the cgroup `cgroup_fd` that runs `body` and exits with its value.
template <typename Body>
pid_t SpawnInCgroup(int cgroup_fd, Body body) {
  clone_args args{};
  args.flags = CLONE_INTO_CGROUP;
  args.exit_signal = SIGCHLD;
  args.cgroup = static_cast<uint64_t>(cgroup_fd);
  const long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid == 0) _exit(body());
  return static_cast<pid_t>(pid);
}

// The churn workload of one process: run-queue waits (spinning on a CPU another cgroup's spinner
// keeps busy), a sleep, a SYN retransmit, then it reports and blocks until `go` closes.
int Worker(int index, int cpu, int netns_fd, int ready_fd, int go_fd, WorkerTruth* truth) {
  test::PinToCpu(cpu);
  const int64_t t0 = MonotonicNs();
  const SchedStat s0 = OwnSchedStat();
  Spin(1500us);
  const timespec nap{0, 2'000'000};
  nanosleep(&nap, nullptr);
  Spin(500us);
  // Connects spread over 1 s: 500 SYN timers expiring in one tick are a burst test of their own
  // (see the closing note of the churn issue), not the churn this test is about.
  const timespec stagger{0, (index % 100) * 10'000'000L};
  nanosleep(&stagger, nullptr);
  truth->connect_failed = BlackholedConnect(netns_fd);
  const SchedStat s1 = OwnSchedStat();
  const int64_t t1 = MonotonicNs();
  truth->blocked_ns = (t1 - t0) - static_cast<int64_t>(s1.exec_ns - s0.exec_ns) -
                      static_cast<int64_t>(s1.run_delay_ns - s0.run_delay_ns);
  (void)!write(ready_fd, "r", 1);
  char byte;
  while (read(go_fd, &byte, 1) > 0) {
  }
  return 0;
}

// Kills and reaps the processes it was given, also when a test fails half-way; declared after the
// cgroups they live in, so it runs before those are removed.
struct Reaper {
  std::vector<pid_t> pids;
  ~Reaper() {
    for (pid_t pid : pids) kill(pid, SIGKILL);
    for (pid_t pid : pids) waitpid(pid, nullptr, 0);
  }
};

// ---- reading kpulse the way /metrics does ----

struct Totals {
  uint64_t runq_count = 0, runq_sum_ns = 0;
  uint64_t offcpu_ns = 0;
  uint64_t syn = 0;
  uint64_t syn_failures = 0;  // node-wide: attempts the kernel counted but reported failed
  uint64_t node_syn = 0;      // node-wide kpulse_tcp_retransmits_total{kind="syn"}
  uint64_t node_other_kinds = 0;  // ... {kind!="syn"}
  uint64_t retrans_misses = 0;  // runs of the retransmit programs lost to recursion (preemption)
  uint64_t any_cgroup_syn = 0;  // every cgroup series and the deleted totals
  bool other_seen = false;  // a cgroup series "<other>" with anything in it
};

bool IsCgroupFamily(const std::string& name) {
  return name == "kpulse_runqueue_latency_seconds" || name == "kpulse_offcpu_seconds_total" ||
         name == "kpulse_tcp_cgroup_retransmits_total";
}

// Adds the families' samples of series `match`es (by the cgroup label), and the deleted totals
// when `with_deleted`.
void AddTotals(const std::vector<prometheus::MetricFamily>& families,
               const std::function<bool(const std::string&)>& match, bool with_deleted,
               Totals& totals) {
  for (const auto& family : families) {
    const bool deleted = family.name.starts_with("kpulse_deleted_cgroups_");
    if (family.name == "kpulse_bpf_program_recursion_misses_total") {
      for (const auto& metric : family.metric) {
        if (metric.label.at(0).value.starts_with("retransmit_")) {
          totals.retrans_misses += static_cast<uint64_t>(metric.counter.value);
        }
      }
    }
    if (family.name == "kpulse_tcp_retransmits_total") {
      for (const auto& metric : family.metric) {
        if (metric.label.at(0).value == "syn") {
          totals.node_syn += static_cast<uint64_t>(metric.counter.value);
        } else {
          totals.node_other_kinds += static_cast<uint64_t>(metric.counter.value);
        }
      }
    }
    if (family.name == "kpulse_tcp_cgroup_retransmits_total" ||
        family.name == "kpulse_deleted_cgroups_tcp_retransmits_total") {
      for (const auto& metric : family.metric) {
        if (metric.label.back().value == "syn") {
          totals.any_cgroup_syn += static_cast<uint64_t>(metric.counter.value);
        }
      }
    }
    if (family.name == "kpulse_tcp_retransmit_failures_total") {
      for (const auto& metric : family.metric) {
        if (metric.label.at(0).value == "syn") {
          totals.syn_failures += static_cast<uint64_t>(metric.counter.value);
        }
      }
    }
    if (!IsCgroupFamily(family.name) && !(deleted && with_deleted)) continue;
    for (const auto& metric : family.metric) {
      std::string cgroup, kind, state;
      for (const auto& label : metric.label) {
        if (label.name == "cgroup") cgroup = label.value;
        if (label.name == "kind") kind = label.value;
        if (label.name == "state") state = label.value;
      }
      if (cgroup == kOtherCgroup) {
        totals.other_seen |= metric.counter.value != 0 || metric.histogram.sample_count != 0;
      }
      if (!deleted && !match(cgroup)) continue;
      if (family.name.ends_with("runqueue_latency_seconds")) {
        totals.runq_count += metric.histogram.sample_count;
        totals.runq_sum_ns += static_cast<uint64_t>(metric.histogram.sample_sum * 1e9 + 0.5);
      } else if (family.name.ends_with("offcpu_seconds_total")) {
        totals.offcpu_ns += static_cast<uint64_t>(metric.counter.value * 1e9 + 0.5);
      } else if (family.name.ends_with("retransmits_total") && kind == "syn") {
        totals.syn += static_cast<uint64_t>(metric.counter.value);
      }
    }
  }
}

double Seconds(uint64_t ns) { return static_cast<double>(ns) * 1e-9; }

uint64_t RssKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6));
  }
  return 0;
}

class ChurnTest : public ::testing::TestWithParam<SchedHook> {
 protected:
  static constexpr uint32_t kSlots = 1024;

  void SetUp() override {
    KPULSE_REQUIRE_ROOT();
    cpu_ = static_cast<int>(std::thread::hardware_concurrency()) - 1;
    RunqueueConfig runq;
    runq.max_cgroups = kSlots;
    OffcpuConfig offcpu;
    offcpu.max_cgroups = kSlots;
    sched_ = SchedProbe::Start({runq, offcpu, GetParam()});
    ASSERT_EQ(sched_->hook(), ToString(GetParam()));
    RetransConfig retrans;
    retrans.max_cgroups = kSlots;
    // The hook that delivered every event under this test's load (see the churn test's comment).
    retrans.hook = RetransHook::kTracepoint;
    retrans_ = RetransProbe::Start(retrans);
    const auto root = FindCgroup2Mount();
    ASSERT_TRUE(root);
    resolver_ = std::make_shared<CgroupResolver>(*root);
    sweeper_ = std::make_unique<CgroupSweeper>(resolver_);
    sweeper_->Add("cgroup_slots", [this](const CgroupSweeper::Gone& gone) {
      return sched_->SweepSlots(gone).map([](const SlotSweep& s) { return uint64_t{s.recycled}; });
    });
    sweeper_->Add("retrans_cgroups", [this](const CgroupSweeper::Gone& gone) {
      return retrans_->SweepCgroups(gone).map([](uint32_t n) { return uint64_t{n}; });
    });
    auto lookup = [resolver = resolver_](uint64_t id) { return resolver->PathOf(id); };
    const SeriesPolicy unlimited{size_t{1} << 30, std::chrono::seconds(0)};
    labeler_ = std::make_shared<const CgroupLabeler>(lookup);
    runq_ = std::make_unique<RunqueueCollector>(*sched_, labeler_, runq, unlimited);
    offcpu_ = std::make_unique<OffcpuCollector>(*sched_, labeler_, unlimited);
    retrans_collector_ =
        std::make_unique<RetransCollector>(*retrans_, labeler_, RetransConfig{}, unlimited);
  }

  // One scrape of the three collectors.
  std::vector<prometheus::MetricFamily> Scrape() const {
    std::vector<prometheus::MetricFamily> all;
    const BpfProgramCollector programs({retrans_->object()});
    for (const prometheus::Collectable* collector :
         std::initializer_list<const prometheus::Collectable*>{
             runq_.get(), offcpu_.get(), retrans_collector_.get(), &programs}) {
      for (auto& family : collector->Collect()) all.push_back(std::move(family));
    }
    return all;
  }

  int cpu_ = 0;
  std::unique_ptr<SchedProbe> sched_;
  std::unique_ptr<RetransProbe> retrans_;
  std::shared_ptr<CgroupResolver> resolver_;
  std::unique_ptr<CgroupSweeper> sweeper_;
  std::shared_ptr<const CgroupLabeler> labeler_;
  std::unique_ptr<RunqueueCollector> runq_;
  std::unique_ptr<OffcpuCollector> offcpu_;
  std::unique_ptr<RetransCollector> retrans_collector_;
};

// The churn: 5,000 short-lived cgroups through 1,024 slots, each with run-queue waits, a
// sleep and a SYN retransmit, then removed. Every batch is compared with the kernel's truth while
// its processes block (schedstat read from outside, TCPSynRetrans of the test netns), and the
// slot table holds only live cgroups after the sweeps.
// Tolerances: the sched_info hook reads the kernel's own run_delay and pcount, so those must be
// equal. Blocked time is the workers' own wall - on-CPU - run_delay on CLOCK_MONOTONIC against
// kpulse on the run queue's clock: 3%, as in offcpu_test. SYN retransmits: the per-cgroup series
// plus the deleted totals must equal kpulse's node count exactly (churn loses nothing), and the
// node count plus failed attempts must equal TcpExt TCPSynRetrans exactly. The retransmit probe
// runs on the classic tracepoint here: on tp_btf, with both CPUs saturated, this kernel (6.18)
// ran the program for fewer tcp_retransmit_skb hits than happened (6 of 8 runs short: 4,923 to
// 4,989 of 5,000; a run counter inside the program counted 4,953 where `perf stat` counted 5,000
// hits, and recursion_misses stayed 0), while the classic tracepoint saw 5,000 of 5,000 in 2 of 2
// runs (docs/design.md, "Cgroup churn"). That loss is outside the churn handling this test is about.
// Run on the default (sched_info) hook; the wakeup hook's churn behaviour is covered by the two
// tests below, on a scale where its own clock's tolerance holds.
using ChurnSchedInfoTest = ChurnTest;
TEST_P(ChurnSchedInfoTest, FiveThousandCgroupsThroughOneThousandSlotsStayExact) {
  constexpr int kBatches = 10, kPerBatch = 500;
  NetNs ns("churn");
  test::FastSynRetries(ns, 1);
  ns.Nft(test::DropInitialSyns(kBlackholePort));
  const int netns_fd = open(("/run/netns/" + ns.name()).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(netns_fd, 0);
  TestCgroup parent("churn"), load("churnload");
  // Another cgroup's spinner on the workers' CPU gives them run-queue waits.
  const int load_fd = open(load.dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const int cpu = cpu_;
  Reaper spinners;
  const pid_t spinner = SpawnInCgroup(load_fd, [cpu] {
    test::PinToCpu(cpu);
    const int64_t end = MonotonicNs() + 600'000'000'000LL;  // bounded, should the test die
    while (MonotonicNs() < end) {
    }
    return 0;
  });
  ASSERT_GT(spinner, 0);
  spinners.pids.push_back(spinner);
  const std::string prefix = parent.path() + "/";
  const auto in_test = [&](const std::string& cgroup) { return cgroup.starts_with(prefix); };
  auto* truth = static_cast<WorkerTruth*>(mmap(nullptr, sizeof(WorkerTruth) * kPerBatch,
                                               PROT_READ | PROT_WRITE,
                                               MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(truth, MAP_FAILED);

  uint64_t rss_after_first = 0;
  Totals all_truth, all_kpulse;
  for (int batch = 0; batch < kBatches; ++batch) {
    Totals before;
    AddTotals(Scrape(), in_test, true, before);
    const test::TcpCounters tcp_before = test::ReadTcpCounters(&ns);

    std::vector<std::unique_ptr<TestCgroup>> cgroups;
    Reaper reaper;
    std::vector<pid_t>& pids = reaper.pids;
    int ready[2], go[2];
    ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
    std::memset(truth, 0, sizeof(WorkerTruth) * kPerBatch);
    for (int i = 0; i < kPerBatch; ++i) {
      cgroups.push_back(std::make_unique<TestCgroup>("c", &parent));
      const int fd = open(cgroups.back()->dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      WorkerTruth* mine = truth + i;
      const int ready_fd = ready[1], go_fd = go[0];
      pids.push_back(SpawnInCgroup(fd, [=] {
        close(go[1]);
        return Worker(i, cpu, netns_fd, ready_fd, go_fd, mine);
      }));
      close(fd);
      ASSERT_GT(pids.back(), 0);
    }
    close(ready[1]);
    close(go[0]);
    for (int i = 0; i < kPerBatch; ++i) {
      char byte;
      ASSERT_EQ(read(ready[0], &byte, 1), 1) << "worker " << i << " died";
    }
    close(ready[0]);
    // Truth, read while every worker blocks (stable then).
    Totals batch_truth;
    for (int i = 0; i < kPerBatch; ++i) {
      ASSERT_TRUE(test::WaitAllAsleep(pids[i], 1, 5s));
      const SchedStat stat = test::ProcessSchedStat(pids[i]);
      batch_truth.runq_count += stat.pcount;
      batch_truth.runq_sum_ns += stat.run_delay_ns;
      batch_truth.offcpu_ns += static_cast<uint64_t>(truth[i].blocked_ns);
      EXPECT_EQ(truth[i].connect_failed, 1) << "worker " << i;
    }
    batch_truth.syn = test::ReadTcpCounters(&ns).syn_retrans - tcp_before.syn_retrans;
    Totals after;
    const auto scraped = Scrape();
    AddTotals(scraped, in_test, true, after);
    {  // Which workers' cgroups have no series of their own (diagnosis for a failure below).
      std::set<std::string> seen;
      for (const auto& family : scraped) {
        if (family.name != "kpulse_offcpu_seconds_total") continue;
        for (const auto& metric : family.metric) seen.insert(metric.label.at(0).value);
      }
      for (const auto& cgroup : cgroups) {
        if (seen.contains(cgroup->path())) continue;
        const auto labels = labeler_->LabelsOf(cgroup->id());
        const auto path = resolver_->PathOf(cgroup->id());
        std::printf("no off-CPU series for %s (id %llu): labeler %s, resolver %s\n",
                    cgroup->path().c_str(), (unsigned long long)cgroup->id(),
                    labels ? labels->cgroup.c_str() : "(gone)", path ? path->c_str() : "(none)");
      }
    }
    EXPECT_FALSE(after.other_seen) << "batch " << batch << ": a live cgroup fell into <other>";

    const Totals delta{after.runq_count - before.runq_count,
                       after.runq_sum_ns - before.runq_sum_ns, after.offcpu_ns - before.offcpu_ns,
                       after.syn - before.syn, after.syn_failures - before.syn_failures};
    std::printf("batch %d: runq count %llu/%llu, sum %.4f/%.4f s; blocked %.3f/%.3f s; syn %llu "
                "(+%llu failed)/%llu (kpulse/kernel)\n",
                batch, (unsigned long long)delta.runq_count,
                (unsigned long long)batch_truth.runq_count, Seconds(delta.runq_sum_ns),
                Seconds(batch_truth.runq_sum_ns), Seconds(delta.offcpu_ns),
                Seconds(batch_truth.offcpu_ns), (unsigned long long)delta.syn,
                (unsigned long long)delta.syn_failures,
                (unsigned long long)batch_truth.syn);
    EXPECT_EQ(batch_truth.syn, static_cast<uint64_t>(kPerBatch)) << "one SYN retransmit each";
    // TCPSynRetrans also counts attempts that then failed to go out (500 SYNs retransmitted in one
    // timer tick can overflow loopback's backlog): kpulse counts those apart, node-wide
    // (docs/metrics.md).
    const uint64_t node_syn = after.node_syn - before.node_syn;
    EXPECT_EQ(delta.syn, node_syn) << "the test's cgroups and the deleted totals hold every SYN "
                                      "retransmit kpulse counted for the node";
    EXPECT_EQ(node_syn + delta.syn_failures, batch_truth.syn)
        << delta.syn_failures << " failed attempts, "
        << after.retrans_misses - before.retrans_misses << " recursion misses, "
        << after.node_other_kinds - before.node_other_kinds << " of other kinds";
    const auto near = [](uint64_t value, uint64_t truth_value) {
      return std::abs(static_cast<double>(value) - static_cast<double>(truth_value)) <=
             0.03 * static_cast<double>(truth_value);
    };
    if (GetParam() == SchedHook::kSchedInfo) {
      EXPECT_EQ(delta.runq_count, batch_truth.runq_count);
      // Equal but for the exposition's seconds (a double per series: <= 1 ns each).
      EXPECT_NEAR(static_cast<double>(delta.runq_sum_ns),
                  static_cast<double>(batch_truth.runq_sum_ns), 2.0 * kPerBatch);
    } else {
      EXPECT_TRUE(near(delta.runq_count, batch_truth.runq_count));
      EXPECT_TRUE(near(delta.runq_sum_ns, batch_truth.runq_sum_ns));
    }
    EXPECT_TRUE(near(delta.offcpu_ns, batch_truth.offcpu_ns));
    all_truth.runq_count += batch_truth.runq_count;
    all_kpulse.runq_count += delta.runq_count;
    all_truth.syn += batch_truth.syn;
    all_kpulse.syn += delta.syn + delta.syn_failures;

    // Let them go, remove their cgroups, and sweep twice (unpublish, then recycle).
    close(go[1]);
    for (pid_t pid : pids) waitpid(pid, nullptr, 0);
    pids.clear();
    cgroups.clear();
    for (int sweep = 0; sweep < 2; ++sweep) {
      sweeper_->SweepNow();
      Scrape();  // takes the retired records, as Prometheus's scrapes would
    }
    if (batch == 0) rss_after_first = RssKiB();
  }
  close(load_fd);
  close(netns_fd);
  munmap(truth, sizeof(WorkerTruth) * kPerBatch);

  std::printf("whole run: runq count %llu/%llu, syn %llu/%llu\n",
              (unsigned long long)all_kpulse.runq_count, (unsigned long long)all_truth.runq_count,
              (unsigned long long)all_kpulse.syn, (unsigned long long)all_truth.syn);
  EXPECT_EQ(all_truth.syn, static_cast<uint64_t>(kBatches * kPerBatch));
  // The slot table holds only live cgroups.
  auto owned = sched_->OwnedSlots();
  ASSERT_TRUE(owned);
  for (const auto& [cgroup_id, slot] : *owned) {
    EXPECT_FALSE(resolver_->IsGone(cgroup_id, std::chrono::steady_clock::now()))
        << "slot " << slot << " still owned by removed cgroup " << cgroup_id;
  }
  EXPECT_LT(owned->size(), size_t{kPerBatch}) << "the churned cgroups' slots were given back";
  // User-space state does not grow with churn: 9 more batches add less than 16 MiB of RSS.
  const uint64_t rss_end = RssKiB();
  std::printf("RSS after batch 1: %llu KiB, after %d: %llu KiB\n",
              (unsigned long long)rss_after_first, kBatches, (unsigned long long)rss_end);
  EXPECT_LT(rss_end, rss_after_first + 16 * 1024);
}

// A task whose cached slot belongs to a cgroup that was removed and whose slot went to a new
// cgroup never charges the new one: threads block in A, move to B while blocked, A is removed
// and its slot recycled to C, then the threads wake. C's counts stay exactly its own process's.
TEST_P(ChurnTest, TasksOfARecycledSlotNeverChargeItsNewCgroup) {
  TestCgroup a("recycle-a"), b("recycle-b");
  const int a_fd = open(a.dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int wake[2];
  ASSERT_EQ(pipe2(wake, O_CLOEXEC), 0);
  const int wake_fd = wake[0];
  // Four threads that run a little, then block until `wake` has data, then keep switching.
  const pid_t movers = SpawnInCgroup(a_fd, [wake_fd] {
    auto body = [](void* arg) -> void* {
      const int fd = *static_cast<int*>(arg);
      Spin(300us);
      char byte;
      if (read(fd, &byte, 1) != 1) return nullptr;
      for (int i = 0; i < 200; ++i) {
        Spin(100us);
        const timespec nap{0, 500'000};
        nanosleep(&nap, nullptr);
      }
      return nullptr;
    };
    static int fd_copy;
    fd_copy = wake_fd;
    pthread_t threads[4];
    for (pthread_t& thread : threads) pthread_create(&thread, nullptr, body, &fd_copy);
    for (pthread_t& thread : threads) pthread_join(thread, nullptr);
    pause();
    return 0;
  });
  close(a_fd);
  ASSERT_GT(movers, 0);
  Reaper reaper{{movers}};
  ASSERT_TRUE(test::WaitAllAsleep(movers, 5, 5s));
  uint32_t a_slot = CGROUP_SLOT_NONE;
  auto owned = sched_->OwnedSlots();
  ASSERT_TRUE(owned);
  for (const auto& [id, slot] : *owned) {
    if (id == a.id()) a_slot = slot;
  }
  ASSERT_NE(a_slot, CGROUP_SLOT_NONE) << "A got a slot";

  // Move the blocked threads to B, remove A, recycle its slot.
  std::ofstream(b.dir() + "/cgroup.procs") << movers;
  const std::string a_dir = a.dir();
  ASSERT_EQ(rmdir(a_dir.c_str()), 0) << strerror(errno);
  for (int sweep = 0; sweep < 2; ++sweep) {
    sweeper_->SweepNow();
    Scrape();
  }

  // C: the next cgroup to claim a slot gets A's (the free stack is last in, first out).
  TestCgroup c("recycle-c");
  const int c_fd = open(c.dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int go[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  const int go_fd = go[0];
  const int go_write = go[1];
  const pid_t worker = SpawnInCgroup(c_fd, [go_fd, go_write] {
    close(go_write);  // so that closing it in the test ends the read below
    Spin(2ms);
    const timespec nap{0, 3'000'000};
    nanosleep(&nap, nullptr);
    Spin(1ms);
    char byte;
    while (read(go_fd, &byte, 1) > 0) {
    }
    return 0;
  });
  close(c_fd);
  Reaper c_reaper{{worker}};  // before C is removed
  ASSERT_TRUE(test::WaitAllAsleep(worker, 1, 5s));
  owned = sched_->OwnedSlots();
  ASSERT_TRUE(owned);
  uint32_t c_slot = CGROUP_SLOT_NONE;
  for (const auto& [id, slot] : *owned) {
    if (id == c.id()) c_slot = slot;
  }
  EXPECT_EQ(c_slot, a_slot) << "C should reuse A's slot (test setup)";

  // Wake the movers: their blocks began in A, with A's slot cached.
  ASSERT_EQ(write(wake[1], "xxxx", 4), 4);
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(test::WaitAllAsleep(movers, 1, 5s));  // threads done, main in pause()

  const SchedStat truth = test::ProcessSchedStat(worker);
  Totals kpulse;
  AddTotals(Scrape(), [&](const std::string& cgroup) { return cgroup == c.path(); }, false, kpulse);
  std::printf("C: runq count %llu/%llu, sum %.6f/%.6f s (kpulse/kernel)\n",
              (unsigned long long)kpulse.runq_count, (unsigned long long)truth.pcount,
              Seconds(kpulse.runq_sum_ns), Seconds(truth.run_delay_ns));
  if (GetParam() == SchedHook::kSchedInfo) {
    EXPECT_EQ(kpulse.runq_count, truth.pcount);
    EXPECT_EQ(kpulse.runq_sum_ns, truth.run_delay_ns);
  } else {
    EXPECT_NEAR(static_cast<double>(kpulse.runq_count), static_cast<double>(truth.pcount), 1.0);
  }
  // C's one completed block is its 3 ms nap; the movers' blocks of ~hundreds of ms are not in C.
  EXPECT_LT(kpulse.offcpu_ns, 50'000'000u) << "blocked time of other tasks charged to C";
  EXPECT_GT(kpulse.offcpu_ns, 2'000'000u) << "C's own nap (setup)";

  close(go[1]);
  // A is gone already: recreate an empty directory so its owner's destructor can remove it.
  mkdir(a_dir.c_str(), 0755);
}

// Short-lived processes: a process in a fresh cgroup forks 50 children that run once and block,
// on a CPU shared with another cgroup's spinner. Tasks started after load count from their fork,
// so the cgroup's histogram equals the schedstat of all 51 (the issue measured 29% before).
TEST_P(ChurnTest, ShortLivedChildrenCountFromTheirFork) {
  constexpr int kChildren = 50;
  TestCgroup forks("forks"), load("forkload");
  const int cpu = cpu_;
  const int load_fd = open(load.dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const pid_t spinner = SpawnInCgroup(load_fd, [cpu] {
    test::PinToCpu(cpu);
    const int64_t end = MonotonicNs() + 20'000'000'000LL;  // bounded
    while (MonotonicNs() < end) {
    }
    return 0;
  });
  close(load_fd);
  Reaper reaper{{spinner}};
  std::this_thread::sleep_for(50ms);
  int go[2], pids_pipe[2];
  ASSERT_EQ(pipe2(go, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(pids_pipe, O_CLOEXEC), 0);
  const int go_fd = go[0], go_write = go[1], pids_fd = pids_pipe[1];
  const int forks_fd = open(forks.dir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const pid_t parent = SpawnInCgroup(forks_fd, [=] {
    close(go_write);  // so that closing it in the test lets every process here exit
    test::PinToCpu(cpu);
    for (int i = 0; i < kChildren; ++i) {
      const pid_t child = fork();
      if (child == 0) {
        Spin(200us);  // runs once
        char byte;
        while (read(go_fd, &byte, 1) > 0) {
        }
        _exit(0);
      }
      (void)!write(pids_fd, &child, sizeof(child));
    }
    char byte;
    while (read(go_fd, &byte, 1) > 0) {
    }
    while (wait(nullptr) > 0) {
    }
    return 0;
  });
  close(forks_fd);
  reaper.pids.push_back(parent);
  close(pids_pipe[1]);
  close(go[0]);
  std::vector<pid_t> all = {parent};
  pid_t child;
  while (read(pids_pipe[0], &child, sizeof(child)) == sizeof(child)) {
    all.push_back(child);
    reaper.pids.push_back(child);
    if (all.size() == kChildren + 1) break;
  }
  close(pids_pipe[0]);
  ASSERT_EQ(all.size(), size_t{kChildren + 1});
  SchedStat truth;
  for (pid_t pid : all) {
    ASSERT_TRUE(test::WaitAllAsleep(pid, 1, 10s));
  }
  for (pid_t pid : all) {
    const SchedStat one = test::ProcessSchedStat(pid);
    truth.pcount += one.pcount;
    truth.run_delay_ns += one.run_delay_ns;
  }
  Totals kpulse;
  AddTotals(Scrape(), [&](const std::string& cgroup) { return cgroup == forks.path(); }, false,
            kpulse);
  std::printf("50 short-lived children + parent: runq count %llu/%llu, sum %.4f/%.4f s "
              "(kpulse/kernel)\n",
              (unsigned long long)kpulse.runq_count, (unsigned long long)truth.pcount,
              Seconds(kpulse.runq_sum_ns), Seconds(truth.run_delay_ns));
  EXPECT_GT(truth.run_delay_ns, 1'000'000u) << "they waited behind the spinner (setup)";
  if (GetParam() == SchedHook::kSchedInfo) {
    EXPECT_EQ(kpulse.runq_count, truth.pcount);
    EXPECT_EQ(kpulse.runq_sum_ns, truth.run_delay_ns);
  } else {  // 3%: the wakeup hook's own clock (runqueue_test)
    EXPECT_NEAR(static_cast<double>(kpulse.runq_count), static_cast<double>(truth.pcount),
                0.03 * static_cast<double>(truth.pcount));
    EXPECT_NEAR(static_cast<double>(kpulse.runq_sum_ns), static_cast<double>(truth.run_delay_ns),
                0.03 * static_cast<double>(truth.run_delay_ns));
  }
  close(go[1]);
  EXPECT_EQ(waitpid(parent, nullptr, 0), parent) << "the parent exits once let go";
}

INSTANTIATE_TEST_SUITE_P(SchedInfoHook, ChurnSchedInfoTest, ::testing::Values(SchedHook::kSchedInfo),
                         [](const auto& param) { return std::string(ToString(param.param)); });
INSTANTIATE_TEST_SUITE_P(BothHooks, ChurnTest,
                         ::testing::Values(SchedHook::kSchedInfo, SchedHook::kWakeup),
                         [](const auto& param) { return std::string(ToString(param.param)); });

}  // namespace
}  // namespace kpulse
