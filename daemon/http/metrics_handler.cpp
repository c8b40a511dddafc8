#include "http/metrics_handler.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <iterator>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace kpulse {

void MetricsEndpoint::Add(std::shared_ptr<prometheus::Collectable> collectable) {
  if (!collectable) throw std::invalid_argument("MetricsEndpoint::Add: null collectable");
  collectables_.push_back(std::move(collectable));
}

HttpResponse MetricsEndpoint::Render(const HttpRequest& /*request*/) const {
  // Several probes may report into one family (e.g. kpulse_bpf_map_entries{map}); a second
  // "# TYPE" line for a name is a parse error, so families with the same name are merged.
  std::vector<prometheus::MetricFamily> families;
  std::unordered_map<std::string, size_t> index_of;
  for (const auto& collectable : collectables_) {
    for (auto& family : collectable->Collect()) {
      auto [it, inserted] = index_of.try_emplace(family.name, families.size());
      if (inserted) {
        families.push_back(std::move(family));
      } else {
        auto& metrics = families[it->second].metric;
        metrics.insert(metrics.end(), std::make_move_iterator(family.metric.begin()),
                       std::make_move_iterator(family.metric.end()));
      }
    }
  }
  HttpResponse response;
  response.content_type = std::string(kPrometheusTextContentType);
  response.body = prometheus::TextSerializer().Serialize(families);
  return response;
}

}  // namespace kpulse
