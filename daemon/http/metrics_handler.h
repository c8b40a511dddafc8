#pragma once

#include <prometheus/collectable.h>

#include <memory>
#include <string_view>
#include <vector>

#include "http/http_server.h"

namespace kpulse {

/// Content type of the Prometheus text exposition format 0.0.4.
inline constexpr std::string_view kPrometheusTextContentType =
    "text/plain; version=0.0.4; charset=utf-8";

/// The /metrics page: collects every added collectable at request time and renders the result
/// in the Prometheus text format 0.0.4 with prometheus::TextSerializer, families in the order
/// the collectables were added. Families with the same name from different collectables are
/// merged into one (the first one's HELP and TYPE win).
///
/// Ownership: shares ownership of the collectables. Thread safety: Add() is for start-up and
/// must not run concurrently with Render(); Render() is safe to call from many threads at once
/// as long as every collectable's Collect() is. A Collect() that throws fails the whole scrape
/// (the HTTP server answers 500) rather than serving a page with families missing.
class MetricsEndpoint {
 public:
  void Add(std::shared_ptr<prometheus::Collectable> collectable);

  HttpResponse Render(const HttpRequest& request) const;

 private:
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
};

}  // namespace kpulse
