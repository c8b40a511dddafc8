#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <map>

#include "collect/offcpu_collector.h"
#include "debug/offcpu_stacks.h"
#include "fakes.h"
#include "symbolize/kernel_symbols.h"

namespace kpulse {
namespace {

using test::FakeOffcpuSource;
using test::Hist;
using test::Paths;

using ::testing::HasSubstr;
using ::testing::Not;

OffcpuStack Stack(uint64_t cgroup, uint32_t tgid, uint32_t state, uint64_t blocked_ns,
                  std::vector<uint64_t> kernel, std::vector<uint64_t> user) {
  OffcpuStack stack;
  stack.key.cgroup_id = cgroup;
  stack.key.kstack = 1;
  stack.key.ustack = 2;
  stack.key.tgid = tgid;
  stack.key.state = state;
  stack.value = {blocked_ns, 1};
  stack.kernel_frames = std::move(kernel);
  stack.user_frames = std::move(user);
  return stack;
}

TEST(OffcpuStateName, NamesEveryState) {
  EXPECT_EQ(OffcpuStateName(OFFCPU_SLEEP), "sleep");
  EXPECT_EQ(OffcpuStateName(OFFCPU_DISK), "disk");
  EXPECT_EQ(OffcpuStateName(OFFCPU_IDLE), "idle");
  EXPECT_EQ(OffcpuStateName(OFFCPU_OTHER), "other");
  EXPECT_EQ(OffcpuStateName(9), "unknown");
}

TEST(OffcpuCollector, SecondsTotalAndDurationHistogramPerCgroupAndState) {
  FakeOffcpuSource source;
  source.snapshot.hists = {
      {{100, OFFCPU_SLEEP}, Hist(14, 25, 500000000)},
      {{100, OFFCPU_DISK}, Hist(17, 5, 1000000000)},
      {{200, OFFCPU_SLEEP}, Hist(3, 1, 10000)},  // deleted cgroup
  };
  source.snapshot.overflow[OFFCPU_IDLE] = Hist(20, 2, 3000000000);
  OffcpuCollector collector(source, Paths({{100, "/app.slice"}}));
  const std::string text = prometheus::TextSerializer().Serialize(collector.Collect());
  const std::string app = "cgroup=\"/app.slice\",unit=\"app.slice\"";  // empty labels left out
  const std::string other = "cgroup=\"<other>\"";
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_seconds_total{" + app + ",state=\"sleep\"} 0.5\n"));
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_seconds_total{" + app + ",state=\"disk\"} 1\n"));
  // A removed cgroup that was never labelled while it lived: deleted totals.
  EXPECT_THAT(text,
              HasSubstr("kpulse_deleted_cgroups_offcpu_seconds_total{state=\"sleep\"} 1e-05"));
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_seconds_total{" + other + ",state=\"idle\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_block_duration_seconds_bucket{" + app +
                              ",state=\"disk\",le=\"0.268435456\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_block_duration_seconds_bucket{" + app +
                              ",state=\"disk\",le=\"0.134217728\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("kpulse_offcpu_block_duration_seconds_count{" + app +
                              ",state=\"sleep\"} 25\n"));
}

TEST(FoldOffcpuStacks, RootFirstUserThenKernelFramesWithoutProbeFramesSummed) {
  const std::vector<OffcpuStack> stacks = {
      Stack(1, 42, OFFCPU_SLEEP, 3000000, {0xa, 0xb, 0xc, 0xd, 0xe, 0xf}, {0x1, 0x2}),
      Stack(1, 42, OFFCPU_SLEEP, 2000000, {0xa, 0xb, 0xc, 0xd, 0xe, 0xf}, {0x1, 0x2}),
  };
  // Innermost first, as the wakeup hook's walk at the switch-out sees them.
  const std::map<uint64_t, std::string> kernel = {{0xa, "bpf_prog_1234_sched_switch_raw [bpf]"},
                                                  {0xb, "__traceiter_sched_switch"},
                                                  {0xc, "__schedule"},
                                                  {0xd, "schedule"},
                                                  {0xe, "schedule_timeout"},
                                                  {0xf, "do_sys_read"}};
  const std::map<uint64_t, std::string> user = {{0x1, "read_loop"}, {0x2, "main"}};
  const FoldedStacks folded = FoldOffcpuStacks(
      stacks, [](uint32_t tgid) { return "app" + std::to_string(tgid); },
      [&](const std::vector<uint64_t>& ips) {
        std::vector<std::string> names;
        for (uint64_t ip : ips) names.push_back(kernel.at(ip));
        return names;
      },
      [&](uint32_t, const std::vector<uint64_t>& ips) {
        std::vector<std::string> names;
        for (uint64_t ip : ips) names.push_back(user.at(ip));
        return names;
      });
  ASSERT_EQ(folded.size(), 1u);
  // The probe's own frames and the scheduler's entry go; the blocking path stays.
  EXPECT_EQ(folded.begin()->first, "app42;main;read_loop;do_sys_read;schedule_timeout");
  EXPECT_EQ(folded.begin()->second, 5000u) << "microseconds";
}

TEST(FoldOffcpuStacks, SeparatorsInsideNamesAreReplaced) {
  const FoldedStacks folded = FoldOffcpuStacks(
      {Stack(1, 7, OFFCPU_SLEEP, 1000, {}, {0x1})}, [](uint32_t) { return std::string("a;b"); },
      [](const std::vector<uint64_t>&) { return std::vector<std::string>{}; },
      [](uint32_t, const std::vector<uint64_t>&) { return std::vector<std::string>{"f;g\nh"}; });
  EXPECT_EQ(folded.begin()->first, "a:b;f:g h");
}

TEST(OffcpuStacksEndpoint, DisabledStacksAnswer404WithTheFix) {
  FakeOffcpuSource source;
  OffcpuStacksEndpoint endpoint(source, false, nullptr, Paths({}));
  const HttpResponse response = endpoint.Render(HttpRequest{"GET", "/debug/offcpu", {}, false});
  EXPECT_EQ(response.status, 404u);
  EXPECT_THAT(response.body, HasSubstr("probes.offcpu.stacks.enabled"));
}

TEST(OffcpuStacksEndpoint, RejectsBadParameters) {
  FakeOffcpuSource source;
  OffcpuStacksEndpoint endpoint(source, true, KernelSymbols::Load(), Paths({}));
  EXPECT_EQ(endpoint.Render({"GET", "/debug/offcpu", {{"state", "running"}}, false}).status, 400u);
  EXPECT_EQ(endpoint.Render({"GET", "/debug/offcpu", {{"seconds", "0"}}, false}).status, 400u);
  EXPECT_EQ(endpoint.Render({"GET", "/debug/offcpu", {{"seconds", "61"}}, false}).status, 400u);
  EXPECT_EQ(endpoint.Render({"GET", "/debug/offcpu", {{"pid", "1"}}, false}).status, 400u);
}

TEST(OffcpuStacksEndpoint, FiltersByCgroupAndState) {
  FakeOffcpuSource source;
  source.stacks = {{Stack(1, 1, OFFCPU_SLEEP, 1000000, {}, {}),
                    Stack(2, 2, OFFCPU_SLEEP, 2000000, {}, {}),
                    Stack(1, 3, OFFCPU_DISK, 4000000, {}, {})}};
  OffcpuStacksEndpoint endpoint(source, true, KernelSymbols::Load(), Paths({{1, "/a"}, {2, "/b"}}));
  const std::string body =
      endpoint.Render({"GET", "/debug/offcpu", {{"cgroup", "/a"}, {"state", "sleep"}}, false}).body;
  EXPECT_THAT(body, HasSubstr(" 1000\n"));
  EXPECT_THAT(body, Not(HasSubstr(" 2000\n")));
  EXPECT_THAT(body, Not(HasSubstr(" 4000\n")));
}

TEST(OffcpuStacksEndpoint, SecondsWindowShowsOnlyWhatAccumulatedDuringIt) {
  FakeOffcpuSource source;
  source.stacks = {
      {Stack(1, 1, OFFCPU_SLEEP, 5000000, {}, {})},
      {Stack(1, 1, OFFCPU_SLEEP, 7000000, {}, {}), Stack(1, 2, OFFCPU_SLEEP, 1000000, {}, {})}};
  OffcpuStacksEndpoint endpoint(source, true, KernelSymbols::Load(), Paths({}));
  const std::string body =
      endpoint.Render({"GET", "/debug/offcpu", {{"seconds", "1"}}, false}).body;
  EXPECT_THAT(body, HasSubstr(" 2000\n")) << "7 ms - 5 ms for the stack seen before";
  EXPECT_THAT(body, HasSubstr(" 1000\n")) << "a stack new in the window counts fully";
  EXPECT_THAT(body, Not(HasSubstr(" 7000\n")));
}

}  // namespace
}  // namespace kpulse
