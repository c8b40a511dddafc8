#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <functional>
#include <mutex>
#include <vector>

#include "http/http_server.h"

namespace kpulse {

/// The HTTP server's own counters (HttpStats) as kpulse self-metrics:
/// kpulse_http_requests_total{handler,code}, kpulse_http_request_duration_seconds{handler} (a
/// summary without quantiles: _sum and _count), kpulse_http_{rejected,timed_out,accepted}_
/// connections_total and the kpulse_http_open_connections gauge.
///
/// The counters are read through `stats` at every Collect(), so the owner can replace the server
/// it reads (a reload) and the exported counters still never go backwards:
///  - Rebase() folds what the current source has counted so far into a base that is added to
///    every later reading; call it right before `stats` starts reading the new (zeroed) server,
///    after the old one has stopped counting (HttpServer::Stop()): requests the old server counts
///    after Rebase() are not exported.
///  - Each exported counter is also held at its high-water mark, so a reset source (Rebase()
///    forgotten, or a scrape between Rebase() and the swap that read the old server once more)
///    makes a counter stand still until the new readings pass it, never fall.
/// kpulse_http_open_connections is a gauge of now: never rebased.
///
/// Thread safety: Collect() and Rebase() may be called from any thread, concurrently; both call
/// `stats` under the collector's mutex, so `stats` must not call back into the collector.
/// Collect() never throws unless `stats` does. Owns `stats` (a copy); whatever it reads must
/// outlive the collector or be swapped out by its owner.
class HttpCollector : public prometheus::Collectable {
 public:
  /// Throws std::invalid_argument if `stats` is empty.
  explicit HttpCollector(std::function<HttpStats()> stats);

  std::vector<prometheus::MetricFamily> Collect() const override;

  /// The source is about to be replaced: what it counted so far (as exported now) becomes the
  /// base added to every later reading.
  void Rebase();

 private:
  /// base_ + reading, each counter at least its high-water mark; updates the mark. Requires mu_.
  HttpStats CurrentLocked() const;

  std::function<HttpStats()> stats_;
  mutable std::mutex mu_;
  // Counters only (open_connections unused): the folded readings of replaced sources, and the
  // highest value exported so far.
  HttpStats base_;                // Guarded by mu_.
  mutable HttpStats high_water_;  // Guarded by mu_.
};

}  // namespace kpulse
