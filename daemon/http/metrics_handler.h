#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_server.h"

namespace kpulse {

/// Content type of the Prometheus text exposition format 0.0.4.
inline constexpr std::string_view kPrometheusTextContentType =
    "text/plain; version=0.0.4; charset=utf-8";

/// `families` in the text format 0.0.4 (prometheus::TextSerializer), into a string reserved to
/// `expected_bytes` up front. Large pages are cut into `workers` runs of about equal line counts
/// (a family may be split: its continuation omits the header lines) serialised by as many
/// threads; the text is the same as one serialiser's.
std::string SerializeText(std::vector<prometheus::MetricFamily> families, size_t expected_bytes,
                          size_t workers = 1);

/// Threads that render one /metrics page: the CPUs, at most 4.
size_t RenderWorkers();

/// The /metrics page: collects every added collectable at request time (concurrently, one thread
/// each) and renders the result in the Prometheus text format 0.0.4 with
/// prometheus::TextSerializer (large pages on RenderWorkers() threads), families in the order
/// the collectables were added. Families with the same name from different collectables are
/// merged into one (the first one's HELP and TYPE win).
///
/// Ownership: shares ownership of the collectables. Thread safety: every member may be called
/// from any thread. Render() collects under a shared lock, so scrapes run at once with each
/// other (as long as every collectable's Collect() is thread-safe) but never with Add(),
/// Remove() or Atomically(): a scrape sees a reload's changes all or not at all, and once
/// Remove() returns no scrape still uses the removed collectable. A Collect() that throws fails
/// the whole scrape (the HTTP server answers 500) rather than serving a page with families
/// missing.
class MetricsEndpoint {
 public:
  /// The collectables, while Atomically() holds them: add and remove several in one step.
  class Changes {
   public:
    void Add(std::shared_ptr<prometheus::Collectable> collectable);
    void Remove(const prometheus::Collectable* collectable);

   private:
    friend class MetricsEndpoint;
    explicit Changes(std::vector<std::shared_ptr<prometheus::Collectable>>& collectables)
        : collectables_(collectables) {}
    std::vector<std::shared_ptr<prometheus::Collectable>>& collectables_;
  };

  void Add(std::shared_ptr<prometheus::Collectable> collectable);
  /// Takes `collectable` out (no-op if absent); waits for scrapes collecting from it.
  void Remove(const prometheus::Collectable* collectable);
  /// Runs `change` while no scrape collects: adding, removing and reconfiguring collectors in
  /// one step. `change` must not call the endpoint's other members.
  void Atomically(const std::function<void(Changes&)>& change);

  HttpResponse Render(const HttpRequest& request) const;

 private:
  std::vector<std::vector<prometheus::MetricFamily>> CollectAll() const;

  std::unique_lock<std::shared_mutex> LockExclusive();

  mutable std::mutex turnstile_;     // Taken to acquire mutex_, so that a writer waits only
                                     // for the scrapes already collecting.
  mutable std::shared_mutex mutex_;  // Guards collectables_: shared while collecting.
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  // The last page's size: the next page's buffer is reserved at once instead of growing.
  mutable std::atomic<size_t> last_page_bytes_{0};
};

}  // namespace kpulse
