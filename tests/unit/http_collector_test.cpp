// HttpCollector: the HTTP server's counters as self-metrics, kept monotonic across a replaced
// server by Rebase() and a high-water mark.
#include "collect/http_collector.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "http/http_server.h"
#include "http/listen_address.h"
#include "http_test_client.h"

namespace kpulse {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

using Labels = std::map<std::string, std::string>;

// One exported family, samples keyed by their labels.
struct Family {
  prometheus::MetricType type{};
  std::string help;
  std::map<Labels, prometheus::ClientMetric> samples;
};

std::map<std::string, Family> Collect(const HttpCollector& collector) {
  std::map<std::string, Family> out;
  for (const auto& family : collector.Collect()) {
    Family& entry = out[family.name];
    entry.type = family.type;
    entry.help = family.help;
    for (const auto& metric : family.metric) {
      Labels labels;
      for (const auto& label : metric.label) labels[label.name] = label.value;
      EXPECT_TRUE(entry.samples.emplace(std::move(labels), metric).second)
          << "duplicate series in " << family.name;
    }
  }
  return out;
}

// {labels -> counter value} of a counter family.
std::map<Labels, double> Counters(const Family& family) {
  std::map<Labels, double> out;
  for (const auto& [labels, metric] : family.samples) out[labels] = metric.counter.value;
  return out;
}

// The single unlabelled value of a counter or gauge family.
double Single(const Family& family) {
  EXPECT_EQ(family.samples.size(), 1u);
  if (family.samples.empty()) return -1;
  const auto& [labels, metric] = *family.samples.begin();
  EXPECT_THAT(labels, IsEmpty());
  return family.type == prometheus::MetricType::Gauge ? metric.gauge.value : metric.counter.value;
}

HttpStats SomeStats() {
  HttpStats stats;
  stats.requests = {{{"/metrics", 200}, 5}, {{"other", 404}, 2}};
  stats.latency = {{"/metrics", {5, 0.25}}, {"other", {2, 0.001}}};
  stats.rejected_connections = 1;
  stats.timed_out_connections = 2;
  stats.accepted_connections = 9;
  stats.open_connections = 3;
  return stats;
}

TEST(HttpCollector, ExportsEveryFamilyWithItsTypeLabelsAndValues) {
  const HttpStats source = SomeStats();
  const HttpCollector collector([&source] { return source; });
  const auto families = Collect(collector);

  std::vector<std::string> names;
  for (const auto& [name, family] : families) {
    names.push_back(name);
    EXPECT_FALSE(family.help.empty()) << name;
    EXPECT_EQ(family.help.find('\n'), std::string::npos) << name;
  }
  EXPECT_THAT(
      names,
      ElementsAre("kpulse_http_accepted_connections_total", "kpulse_http_open_connections",
                  "kpulse_http_rejected_connections_total", "kpulse_http_request_duration_seconds",
                  "kpulse_http_requests_total", "kpulse_http_timed_out_connections_total"));

  const Family& requests = families.at("kpulse_http_requests_total");
  EXPECT_EQ(requests.type, prometheus::MetricType::Counter);
  EXPECT_THAT(Counters(requests),
              UnorderedElementsAre(Pair(Labels{{"code", "200"}, {"handler", "/metrics"}}, 5),
                                   Pair(Labels{{"code", "404"}, {"handler", "other"}}, 2)));

  const Family& duration = families.at("kpulse_http_request_duration_seconds");
  EXPECT_EQ(duration.type, prometheus::MetricType::Summary);
  ASSERT_EQ(duration.samples.size(), 2u);
  const auto& scrape = duration.samples.at({{"handler", "/metrics"}}).summary;
  EXPECT_EQ(scrape.sample_count, 5u);
  EXPECT_DOUBLE_EQ(scrape.sample_sum, 0.25);
  EXPECT_THAT(scrape.quantile, IsEmpty());
  const auto& other = duration.samples.at({{"handler", "other"}}).summary;
  EXPECT_EQ(other.sample_count, 2u);
  EXPECT_DOUBLE_EQ(other.sample_sum, 0.001);

  for (const char* name :
       {"kpulse_http_rejected_connections_total", "kpulse_http_timed_out_connections_total",
        "kpulse_http_accepted_connections_total"}) {
    EXPECT_EQ(families.at(name).type, prometheus::MetricType::Counter) << name;
  }
  EXPECT_EQ(Single(families.at("kpulse_http_rejected_connections_total")), 1);
  EXPECT_EQ(Single(families.at("kpulse_http_timed_out_connections_total")), 2);
  EXPECT_EQ(Single(families.at("kpulse_http_accepted_connections_total")), 9);
  EXPECT_EQ(families.at("kpulse_http_open_connections").type, prometheus::MetricType::Gauge);
  EXPECT_EQ(Single(families.at("kpulse_http_open_connections")), 3);
}

TEST(HttpCollector, DurationIsASummaryOfSumAndCountOnlyInTextFormat) {
  const HttpStats source = SomeStats();
  const HttpCollector collector([&source] { return source; });
  const std::string text = prometheus::TextSerializer().Serialize(collector.Collect());
  EXPECT_THAT(text, HasSubstr("# TYPE kpulse_http_request_duration_seconds summary\n"));
  EXPECT_THAT(text, HasSubstr("kpulse_http_request_duration_seconds_sum{handler=\"/metrics\"} "
                              "0.25\n"));
  EXPECT_THAT(text,
              HasSubstr("kpulse_http_request_duration_seconds_count{handler=\"/metrics\"} 5\n"));
  EXPECT_THAT(text, Not(HasSubstr("quantile=")));
  EXPECT_THAT(text, HasSubstr("kpulse_http_requests_total{handler=\"/metrics\",code=\"200\"} 5\n"));
}

TEST(HttpCollector, RebaseKeepsCountersRisingWhenTheSourceIsReplacedByAResetOne) {
  HttpStats source = SomeStats();
  HttpCollector collector([&source] { return source; });
  Collect(collector);

  collector.Rebase();
  // The new server: smaller numbers, one series the old one never had, one it no longer has.
  source = HttpStats{};
  source.requests = {{{"/metrics", 200}, 1}, {{"/debug/offcpu", 503}, 4}};
  source.latency = {{"/metrics", {1, 0.5}}};
  source.accepted_connections = 2;
  source.open_connections = 1;

  const auto families = Collect(collector);
  EXPECT_THAT(Counters(families.at("kpulse_http_requests_total")),
              UnorderedElementsAre(Pair(Labels{{"code", "503"}, {"handler", "/debug/offcpu"}}, 4),
                                   Pair(Labels{{"code", "200"}, {"handler", "/metrics"}}, 5 + 1),
                                   Pair(Labels{{"code", "404"}, {"handler", "other"}}, 2)));
  const auto& duration = families.at("kpulse_http_request_duration_seconds").samples;
  EXPECT_EQ(duration.at({{"handler", "/metrics"}}).summary.sample_count, 5u + 1u);
  EXPECT_DOUBLE_EQ(duration.at({{"handler", "/metrics"}}).summary.sample_sum, 0.25 + 0.5);
  EXPECT_EQ(duration.at({{"handler", "other"}}).summary.sample_count, 2u);
  EXPECT_EQ(Single(families.at("kpulse_http_rejected_connections_total")), 1);
  EXPECT_EQ(Single(families.at("kpulse_http_timed_out_connections_total")), 2);
  EXPECT_EQ(Single(families.at("kpulse_http_accepted_connections_total")), 9 + 2);
  EXPECT_EQ(Single(families.at("kpulse_http_open_connections")), 1) << "a gauge, not rebased";

  // The new server counts on; so do the exported counters, and a second swap adds up too.
  source.requests[{"/metrics", 200}] = 3;
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total"))
                .at({{"code", "200"}, {"handler", "/metrics"}}),
            5 + 3);
  collector.Rebase();
  source = HttpStats{};
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total"))
                .at({{"code", "200"}, {"handler", "/metrics"}}),
            5 + 3);
}

TEST(HttpCollector, AResetSourceWithoutRebaseMakesCountersStandStillNotFall) {
  HttpStats source = SomeStats();
  HttpCollector collector([&source] { return source; });
  Collect(collector);

  source = HttpStats{};
  source.requests = {{{"/metrics", 200}, 1}};
  const auto families = Collect(collector);
  EXPECT_EQ(Counters(families.at("kpulse_http_requests_total"))
                .at({{"code", "200"}, {"handler", "/metrics"}}),
            5);
  EXPECT_EQ(Single(families.at("kpulse_http_accepted_connections_total")), 9);
  EXPECT_EQ(families.at("kpulse_http_request_duration_seconds")
                .samples.at({{"handler", "other"}})
                .summary.sample_count,
            2u);

  source.requests = {{{"/metrics", 200}, 7}};  // past the old value: follows it again
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total"))
                .at({{"code", "200"}, {"handler", "/metrics"}}),
            7);
}

TEST(HttpCollector, AScrapeBetweenRebaseAndTheSwapNeverMakesCountersFall) {
  HttpStats source = SomeStats();
  HttpCollector collector([&source] { return source; });
  collector.Rebase();
  // Read once more before the owner swaps: the old server's 5 are counted twice for now...
  const Labels key{{"code", "200"}, {"handler", "/metrics"}};
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total")).at(key), 10);
  // ...and the new server's first requests do not bring the counter down.
  source = HttpStats{};
  source.requests = {{{"/metrics", 200}, 2}};
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total")).at(key), 10);
  source.requests = {{{"/metrics", 200}, 6}};
  EXPECT_EQ(Counters(Collect(collector).at("kpulse_http_requests_total")).at(key), 5 + 6);
}

TEST(HttpCollector, CountsWhatARealServerAnsweredAsTheClientSawIt) {
  HttpServer::Options options;
  auto address = ParseListenAddress("127.0.0.1:0");
  ASSERT_TRUE(address.has_value());
  options.listen.push_back(*address);
  HttpServer server(std::move(options));
  const HttpCollector collector([&server] { return server.Stats(); });
  server.Route("/metrics", [&collector](const HttpRequest&) {
    return HttpResponse{200, "text/plain; version=0.0.4",
                        prometheus::TextSerializer().Serialize(collector.Collect())};
  });
  server.Start();
  const uint16_t port = server.BoundPorts().at(0);

  // What the client sent and got back, by (path, status): the ground truth.
  std::map<std::pair<std::string, int>, int> answered;
  for (int i = 0; i < 3; ++i) {
    const http_test::Reply reply = http_test::Fetch(AF_INET, port, "GET", "/metrics");
    ++answered[{"/metrics", reply.status}];
    // Each scrape sees the ones before it: a request is counted before its answer goes out.
    const std::string earlier =
        "kpulse_http_requests_total{handler=\"/metrics\",code=\"200\"} " + std::to_string(i) + "\n";
    if (i > 0) {
      EXPECT_THAT(reply.body, HasSubstr(earlier)) << "scrape " << i + 1;
    }
  }
  ++answered[{"/nope", http_test::Fetch(AF_INET, port, "GET", "/nope").status}];
  ASSERT_THAT(answered, ElementsAre(Pair(Pair("/metrics", 200), 3), Pair(Pair("/nope", 404), 1)));

  const auto families = Collect(collector);
  EXPECT_THAT(Counters(families.at("kpulse_http_requests_total")),
              UnorderedElementsAre(Pair(Labels{{"code", "200"}, {"handler", "/metrics"}}, 3),
                                   Pair(Labels{{"code", "404"}, {"handler", "other"}}, 1)));
  const auto& duration = families.at("kpulse_http_request_duration_seconds").samples;
  ASSERT_EQ(duration.size(), 2u);
  EXPECT_EQ(duration.at({{"handler", "/metrics"}}).summary.sample_count, 3u);
  EXPECT_GT(duration.at({{"handler", "/metrics"}}).summary.sample_sum, 0);
  EXPECT_EQ(duration.at({{"handler", "other"}}).summary.sample_count, 1u);
  EXPECT_EQ(Single(families.at("kpulse_http_accepted_connections_total")), 4)
      << "Fetch opens a connection per request";
  EXPECT_EQ(Single(families.at("kpulse_http_rejected_connections_total")), 0);
  EXPECT_EQ(Single(families.at("kpulse_http_timed_out_connections_total")), 0);
}

}  // namespace
}  // namespace kpulse
