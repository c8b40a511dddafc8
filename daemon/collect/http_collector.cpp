#include "collect/http_collector.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "collect/family_builder.h"

namespace kpulse {

namespace {

// The counters of `from` added to `into` (open_connections is left alone).
void AddCounters(HttpStats& into, const HttpStats& from) {
  for (const auto& [key, count] : from.requests) into.requests[key] += count;
  for (const auto& [handler, latency] : from.latency) {
    HttpStats::Latency& sum = into.latency[handler];
    sum.count += latency.count;
    sum.sum_seconds += latency.sum_seconds;
  }
  into.rejected_connections += from.rejected_connections;
  into.timed_out_connections += from.timed_out_connections;
  into.accepted_connections += from.accepted_connections;
}

// Every counter of `value` raised to at least its value in `floor`; keys only in `floor` are
// added (open_connections is left alone).
void RaiseCounters(HttpStats& value, const HttpStats& floor) {
  for (const auto& [key, count] : floor.requests) {
    uint64_t& mine = value.requests[key];
    mine = std::max(mine, count);
  }
  for (const auto& [handler, latency] : floor.latency) {
    HttpStats::Latency& mine = value.latency[handler];
    mine.count = std::max(mine.count, latency.count);
    mine.sum_seconds = std::max(mine.sum_seconds, latency.sum_seconds);
  }
  value.rejected_connections = std::max(value.rejected_connections, floor.rejected_connections);
  value.timed_out_connections = std::max(value.timed_out_connections, floor.timed_out_connections);
  value.accepted_connections = std::max(value.accepted_connections, floor.accepted_connections);
}

}  // namespace

HttpCollector::HttpCollector(std::function<HttpStats()> stats) : stats_(std::move(stats)) {
  if (!stats_) throw std::invalid_argument("HttpCollector needs a stats function");
}

HttpStats HttpCollector::CurrentLocked() const {
  const HttpStats reading = stats_();
  HttpStats current = base_;
  AddCounters(current, reading);
  RaiseCounters(current, high_water_);
  high_water_ = current;
  current.open_connections = reading.open_connections;
  return current;
}

void HttpCollector::Rebase() {
  const std::lock_guard lock(mu_);
  base_ = CurrentLocked();
  base_.open_connections = 0;
}

std::vector<prometheus::MetricFamily> HttpCollector::Collect() const {
  HttpStats stats;
  {
    const std::lock_guard lock(mu_);
    stats = CurrentLocked();
  }

  auto requests = MakeFamily("kpulse_http_requests_total",
                             "HTTP requests answered by kpulse, by handler and status code.",
                             prometheus::MetricType::Counter);
  for (const auto& [key, count] : stats.requests) {
    AddSample(requests, {{"handler", key.first}, {"code", std::to_string(key.second)}},
              static_cast<double>(count));
  }

  auto duration = MakeFamily("kpulse_http_request_duration_seconds",
                             "Time from a request's header being in to its answer being ready.",
                             prometheus::MetricType::Summary);
  for (const auto& [handler, latency] : stats.latency) {
    prometheus::ClientMetric metric;
    metric.label = {{"handler", handler}};
    metric.summary.sample_count = latency.count;
    metric.summary.sample_sum = latency.sum_seconds;
    duration.metric.push_back(std::move(metric));
  }

  auto rejected = MakeFamily("kpulse_http_rejected_connections_total",
                             "HTTP connections over http.max_connections, answered 503 or closed.",
                             prometheus::MetricType::Counter);
  AddSample(rejected, {}, static_cast<double>(stats.rejected_connections));
  auto timed_out = MakeFamily("kpulse_http_timed_out_connections_total",
                              "HTTP connections closed for sending no complete request in time.",
                              prometheus::MetricType::Counter);
  AddSample(timed_out, {}, static_cast<double>(stats.timed_out_connections));
  auto accepted = MakeFamily("kpulse_http_accepted_connections_total",
                             "HTTP connections accepted, over the limit or not.",
                             prometheus::MetricType::Counter);
  AddSample(accepted, {}, static_cast<double>(stats.accepted_connections));
  auto open = MakeFamily("kpulse_http_open_connections", "HTTP connections open now.",
                         prometheus::MetricType::Gauge);
  AddSample(open, {}, static_cast<double>(stats.open_connections));

  std::vector<prometheus::MetricFamily> families;
  families.reserve(6);
  families.push_back(std::move(requests));
  families.push_back(std::move(duration));
  families.push_back(std::move(rejected));
  families.push_back(std::move(timed_out));
  families.push_back(std::move(accepted));
  families.push_back(std::move(open));
  return families;
}

}  // namespace kpulse
