#include "collect/self_collector.h"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>

#include <chrono>
#include <map>
#include <string>

namespace kpulse {
namespace {

// family name -> (first label value or "" -> gauge value)
std::map<std::string, std::map<std::string, double>> Gauges(const SelfCollector& collector) {
  std::map<std::string, std::map<std::string, double>> out;
  for (const auto& family : collector.Collect()) {
    for (const auto& metric : family.metric) {
      out[family.name][metric.label.empty() ? "" : metric.label.front().value] = metric.gauge.value;
    }
  }
  return out;
}

TEST(SelfCollector, ReloadGaugesStartAtTheLoadTimeAndFollowEachReload) {
  const auto loaded = std::chrono::system_clock::time_point(std::chrono::seconds(1000));
  SelfCollector self({{"tcp_retransmit", true, "tp_btf"}}, loaded);
  auto gauges = Gauges(self);
  EXPECT_EQ(gauges["kpulse_config_last_reload_successful"][""], 1);
  EXPECT_EQ(gauges["kpulse_config_last_reload_success_timestamp_seconds"][""], 1000);

  self.RecordReload(false, loaded + std::chrono::seconds(5));
  gauges = Gauges(self);
  EXPECT_EQ(gauges["kpulse_config_last_reload_successful"][""], 0);
  EXPECT_EQ(gauges["kpulse_config_last_reload_success_timestamp_seconds"][""], 1000)
      << "a refused reload leaves the time of the configuration in use";

  self.RecordReload(true, loaded + std::chrono::milliseconds(9500));
  gauges = Gauges(self);
  EXPECT_EQ(gauges["kpulse_config_last_reload_successful"][""], 1);
  EXPECT_DOUBLE_EQ(gauges["kpulse_config_last_reload_success_timestamp_seconds"][""], 1009.5);
}

TEST(SelfCollector, ProbeStatusesFollowSetProbes) {
  SelfCollector self({{"tcp_retransmit", false, ""}});
  EXPECT_EQ(Gauges(self)["kpulse_probe_up"]["tcp_retransmit"], 0);
  EXPECT_FALSE(Gauges(self)["kpulse_probe_info"].contains("tcp_retransmit")) << "down: no hook";
  self.SetProbes({{"tcp_retransmit", true, "tracepoint"}, {"offcpu", true, "sched_info"}});
  auto gauges = Gauges(self);
  EXPECT_EQ(gauges["kpulse_probe_up"]["tcp_retransmit"], 1);
  EXPECT_EQ(gauges["kpulse_probe_up"]["offcpu"], 1);
  EXPECT_EQ(gauges["kpulse_probe_info"]["tcp_retransmit"], 1);
}

}  // namespace
}  // namespace kpulse
