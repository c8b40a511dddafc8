#include "config/config.h"
#include "collect/runqueue_collector.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <map>

#include "fakes.h"

namespace kpulse {
namespace {

using test::FakeRunqueueSource;
using test::Hist;
using test::Paths;

using ::testing::HasSubstr;
using ::testing::Not;

std::string Render(const RunqueueCollector& collector) {
  return prometheus::TextSerializer().Serialize(collector.Collect());
}

TEST(SlotUpperBound, SlotIHoldsValuesBelowTwoToTheIPlusElevenNanoseconds) {
  // floor(log2(ns)) = i + 10 puts ns in [2^(i+10), 2^(i+11)): the bucket's le is 2^(i+11) ns,
  // not 2^(i+10) (ebpf_exporter's off-by-one).
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(0), 2048e-9);
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(1), 4096e-9);
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(10), 2097152e-9);
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(14), 0.033554432);
  EXPECT_DOUBLE_EQ(SlotUpperBoundSeconds(SCHED_HIST_SLOTS - 2), 68.719476736);
}

TEST(ToPrometheusHistogram, BucketsAreCumulativeAndSumAndCountExact) {
  const auto out = ToPrometheusHistogram(Hist({{0, 2}, {3, 5}, {14, 1}}, 123456789));
  ASSERT_EQ(out.bucket.size(), static_cast<size_t>(SCHED_HIST_SLOTS - 1));
  EXPECT_EQ(out.bucket[0].cumulative_count, 2u);
  EXPECT_EQ(out.bucket[2].cumulative_count, 2u);
  EXPECT_EQ(out.bucket[3].cumulative_count, 7u);
  EXPECT_DOUBLE_EQ(out.bucket[3].upper_bound, 16384e-9);
  EXPECT_EQ(out.bucket[13].cumulative_count, 7u);
  EXPECT_EQ(out.bucket[14].cumulative_count, 8u);
  EXPECT_EQ(out.sample_count, 8u);
  EXPECT_DOUBLE_EQ(out.sample_sum, 0.123456789);
}

TEST(ToPrometheusHistogram, OpenEndedLastSlotOnlyInInf) {
  const auto out = ToPrometheusHistogram(Hist({{SCHED_HIST_SLOTS - 1, 3}}, 300000000000ULL));
  EXPECT_EQ(out.bucket.back().cumulative_count, 0u) << "no finite bucket holds >= 67 s";
  EXPECT_EQ(out.sample_count, 3u);  // the serializer's +Inf bucket
}

TEST(RunqueueCollector, PerCgroupAndNodeHistogramsInTextFormat) {
  FakeRunqueueSource source;
  source.snapshot.hists = {{{100, kAllCpus}, Hist({{3, 4}}, 40000)}};
  source.snapshot.overflow = Hist({{5, 1}}, 50000);
  RunqueueCollector collector(source, Paths({{100, "/system.slice/app.service"}}),
                              RunqueueConfig{});
  const std::string text = Render(collector);
  const std::string app =
      "cgroup=\"/system.slice/app.service\",unit=\"app.service\"";  // empty labels left out
  EXPECT_THAT(text, HasSubstr("# TYPE kpulse_runqueue_latency_seconds histogram"));
  EXPECT_THAT(text,
              HasSubstr("kpulse_runqueue_latency_seconds_bucket{" + app + ",le=\"1.6384e-05\"} 4"));
  EXPECT_THAT(text, HasSubstr("kpulse_runqueue_latency_seconds_count{" + app + "} 4"));
  EXPECT_THAT(text, HasSubstr("kpulse_runqueue_latency_seconds_count{cgroup=\"<other>\"} 1"));
  // Node = every cgroup + overflow.
  EXPECT_THAT(text, HasSubstr("kpulse_node_runqueue_latency_seconds_count 5"));
  EXPECT_THAT(text, HasSubstr("kpulse_node_runqueue_latency_seconds_bucket{le=\"+Inf\"} 5"));
  for (const auto& family : collector.Collect()) {
    if (family.name == "kpulse_node_runqueue_latency_seconds") {
      EXPECT_DOUBLE_EQ(family.metric.at(0).histogram.sample_sum, 90000e-9);
    }
  }
}

TEST(RunqueueCollector, RemovedCgroupsAreDeletedTotalsAndPerCpuAddsACpuLabel) {
  FakeRunqueueSource source;
  source.snapshot.hists = {
      {{7, 0}, Hist({{1, 1}}, 3000)},
      {{8, 0}, Hist({{1, 2}}, 6000)},
      {{9, 1}, Hist({{2, 1}}, 5000)},
  };
  RunqueueConfig config;
  config.per_cpu = true;
  RunqueueCollector collector(source, Paths({{9, "/a"}}), config);
  const std::string text = Render(collector);
  EXPECT_THAT(text, HasSubstr("kpulse_deleted_cgroups_runqueue_latency_seconds_count{cpu=\"0\"} 3"));
  EXPECT_THAT(text, HasSubstr("kpulse_runqueue_latency_seconds_count{cgroup=\"/a\",cpu=\"1\"} 1"));
  EXPECT_THAT(text, HasSubstr("kpulse_node_runqueue_latency_seconds_count 4"));
}

TEST(RunqueueCollector, RetiredSlotsKeepTheNodeHistogramAndDeletedTotalsMonotonic) {
  FakeRunqueueSource source;
  source.snapshot.hists = {{{7, kAllCpus}, Hist({{1, 2}}, 6000)},
                           {{9, kAllCpus}, Hist({{2, 1}}, 5000)}};
  RunqueueCollector collector(source, Paths({{9, "/a"}}), RunqueueConfig{});
  EXPECT_THAT(Render(collector), HasSubstr("kpulse_node_runqueue_latency_seconds_count 3"));
  // The sweep recycles 7's slot: its histogram arrives once as retired, then never again.
  source.snapshot.hists = {{{9, kAllCpus}, Hist({{2, 1}}, 5000)}};
  source.snapshot.retired = {{{7, kAllCpus}, Hist({{1, 2}}, 6000)}};
  for (int scrape = 0; scrape < 2; ++scrape) {
    const std::string text = Render(collector);
    EXPECT_THAT(text, HasSubstr("kpulse_node_runqueue_latency_seconds_count 3"));
    EXPECT_THAT(text, HasSubstr("kpulse_deleted_cgroups_runqueue_latency_seconds_count 2"));
  }
}

TEST(RunqueueCollector, ReadErrorYieldsOnlyTheErrorCounter) {
  FakeRunqueueSource source;
  source.error = "lookup of BPF map 'sched_totals' failed: Bad file descriptor";
  RunqueueCollector collector(source, Paths({}), RunqueueConfig{});
  const auto families = collector.Collect();
  ASSERT_EQ(families.size(), 1u);
  EXPECT_EQ(families[0].name, "kpulse_runqueue_read_errors_total");
  EXPECT_THAT(Render(collector), Not(HasSubstr("kpulse_runqueue_latency_seconds")));
}

}  // namespace
}  // namespace kpulse
