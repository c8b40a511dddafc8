#include "http/metrics_handler.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <functional>
#include <future>
#include <iterator>
#include <mutex>
#include <ostream>
#include <shared_mutex>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

namespace kpulse {

namespace {

// prometheus::TextSerializer writes label values one character at a time, each a virtual
// xsputn call: std::stringbuf's generic one and its growth (then a copy in str()) made up a
// fifth of a 100k-line page's serialisation (perf). This appends to a string reserved up front.
class StringAppendBuf final : public std::streambuf {
 public:
  explicit StringAppendBuf(std::string& out) : out_(out) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n == 1) {
      out_.push_back(*s);
    } else {
      out_.append(s, static_cast<size_t>(n));
    }
    return n;
  }
  int_type overflow(int_type c) override {
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      out_.push_back(traits_type::to_char_type(c));
    }
    return traits_type::not_eof(c);
  }

 private:
  std::string& out_;
};

// On a new thread, or deferred to get() when no thread can be created (e.g. the unit's TasksMax):
// the part then runs on the caller's thread instead of failing the scrape.
template <typename Function>
auto StartAsync(Function function) {
  try {
    return std::async(std::launch::async, function);
  } catch (const std::system_error&) {
    return std::async(std::launch::deferred, function);
  }
}

// Lines a metric takes in the text format: a histogram's buckets, +Inf, _sum and _count.
size_t LineCount(const prometheus::MetricFamily& family, const prometheus::ClientMetric& metric) {
  return family.type == prometheus::MetricType::Histogram ? metric.histogram.bucket.size() + 3 : 1;
}

// What one worker serialises: whole families, except that the first may continue a family
// split from the previous run (it must not repeat the family's header lines) and the last may be
// cut short.
struct Run {
  std::vector<prometheus::MetricFamily> families;
  bool starts_with_continuation = false;
};

// Serialises `run` onto `out` in one TextSerializer call (a family per element, moved in, never
// copied), then drops a continuation's header. Its help is left empty, so the serialiser wrote
// just its "# TYPE" line (a "# HELP" line too, should a version write one for empty help).
void SerializeRun(std::string& out, const Run& run) {
  const size_t start = out.size();
  {
    StringAppendBuf buffer(out);
    std::ostream stream(&buffer);
    prometheus::TextSerializer().Serialize(stream, run.families);
  }
  if (!run.starts_with_continuation) return;
  const std::string& name = run.families.front().name;
  size_t end = start;
  for (const char* header : {"# HELP ", "# TYPE "}) {
    const std::string prefix = header + name + " ";
    if (out.compare(end, prefix.size(), prefix) != 0) continue;
    const size_t newline = out.find('\n', end);
    end = newline == std::string::npos ? out.size() : newline + 1;
  }
  out.erase(start, end - start);
}

// Cuts `families` into `workers` runs of about equal line counts, splitting large families.
std::vector<Run> Partition(std::vector<prometheus::MetricFamily> families, size_t total_lines,
                           size_t workers) {
  std::vector<Run> runs(workers);
  const size_t per_worker = (total_lines + workers - 1) / workers;
  size_t run = 0, lines_in_run = 0;
  for (auto& family : families) {
    prometheus::MetricFamily piece{family.name, family.help, family.type, {}};
    for (auto& metric : family.metric) {
      const size_t lines = LineCount(family, metric);
      if (lines_in_run + lines > per_worker && lines_in_run > 0 && run + 1 < workers) {
        const bool started = !piece.metric.empty();
        if (started) runs[run].families.push_back(std::move(piece));
        ++run;
        lines_in_run = 0;
        // A continuation keeps no help, so that the serialiser writes one header line for it.
        piece = prometheus::MetricFamily{family.name, started ? "" : family.help, family.type, {}};
        runs[run].starts_with_continuation = started;
      }
      piece.metric.push_back(std::move(metric));
      lines_in_run += lines;
    }
    // An empty family still gets its header lines, as the serialiser writes them.
    const bool continuation = runs[run].starts_with_continuation && runs[run].families.empty();
    if (!piece.metric.empty() || !continuation) runs[run].families.push_back(std::move(piece));
  }
  return runs;
}

}  // namespace

std::string SerializeText(std::vector<prometheus::MetricFamily> families, size_t expected_bytes,
                          size_t workers) {
  size_t total_lines = 0;
  for (const auto& family : families) {
    for (const auto& metric : family.metric) total_lines += LineCount(family, metric);
  }
  // Below this a second thread costs more than it saves.
  constexpr size_t kLinesPerWorker = 10000;
  workers = std::clamp<size_t>(std::min(workers, total_lines / kLinesPerWorker), 1, 64);
  if (workers == 1) {
    std::string text;
    text.reserve(expected_bytes);
    {
      StringAppendBuf buffer(text);
      std::ostream out(&buffer);
      prometheus::TextSerializer().Serialize(out, families);
    }
    return text;
  }
  auto runs = Partition(std::move(families), total_lines, workers);
  auto serialize_run = [&runs](size_t run, size_t reserve) {
    std::string text;
    text.reserve(reserve);
    SerializeRun(text, runs[run]);
    // Freeing ~100k metrics' label strings takes milliseconds: each worker frees its own.
    std::vector<prometheus::MetricFamily>().swap(runs[run].families);
    return text;
  };
  std::vector<std::future<std::string>> others;
  for (size_t run = 1; run < workers; ++run) {
    const size_t reserve = expected_bytes / workers + expected_bytes / 16;
    others.push_back(
        StartAsync([&serialize_run, run, reserve] { return serialize_run(run, reserve); }));
  }
  std::string text = serialize_run(0, expected_bytes);  // the whole page ends up here
  for (auto& other : others) text += other.get();
  return text;
}

size_t RenderWorkers() {
  // Up to 4: a 100k-series page takes ~60 ms of serialisation on one core (docs/benchmarks.md).
  return std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 4);
}

void MetricsEndpoint::Changes::Add(std::shared_ptr<prometheus::Collectable> collectable) {
  if (!collectable) throw std::invalid_argument("MetricsEndpoint::Add: null collectable");
  collectables_.push_back(std::move(collectable));
}

void MetricsEndpoint::Changes::Remove(const prometheus::Collectable* collectable) {
  std::erase_if(collectables_,
                [collectable](const auto& held) { return held.get() == collectable; });
}

void MetricsEndpoint::Add(std::shared_ptr<prometheus::Collectable> collectable) {
  Atomically([&](Changes& changes) { changes.Add(std::move(collectable)); });
}

void MetricsEndpoint::Remove(const prometheus::Collectable* collectable) {
  Atomically([&](Changes& changes) { changes.Remove(collectable); });
}

void MetricsEndpoint::Atomically(const std::function<void(Changes&)>& change) {
  const auto lock = LockExclusive();
  Changes changes(collectables_);
  change(changes);
}

std::unique_lock<std::shared_mutex> MetricsEndpoint::LockExclusive() {
  // Holding the turnstile keeps new scrapes out while the running ones finish: glibc's
  // rwlock prefers readers, and overlapping scrapes would starve a reload forever.
  const std::lock_guard turnstile(turnstile_);
  return std::unique_lock(mutex_);
}

std::vector<std::vector<prometheus::MetricFamily>> MetricsEndpoint::CollectAll() const {
  std::unique_lock turnstile(turnstile_);
  const std::shared_lock lock(mutex_);
  turnstile.unlock();
  // Collectors are independent (each reads its own maps): run them at once.
  std::vector<std::future<std::vector<prometheus::MetricFamily>>> collected;
  for (size_t i = 1; i < collectables_.size(); ++i) {
    collected.push_back(
        StartAsync([&collectable = *collectables_[i]] { return collectable.Collect(); }));
  }
  std::vector<std::vector<prometheus::MetricFamily>> parts;
  if (!collectables_.empty()) parts.push_back(collectables_.front()->Collect());
  for (auto& part : collected) parts.push_back(part.get());
  return parts;
}

HttpResponse MetricsEndpoint::Render(const HttpRequest& /*request*/) const {
  std::vector<std::vector<prometheus::MetricFamily>> parts = CollectAll();

  // Several probes may report into one family (e.g. kpulse_bpf_map_entries{map}); a second
  // "# TYPE" line for a name is a parse error, so families with the same name are merged.
  std::vector<prometheus::MetricFamily> families;
  std::unordered_map<std::string, size_t> index_of;
  for (auto& part : parts) {
    for (auto& family : part) {
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
  response.body =
      SerializeText(std::move(families), last_page_bytes_.load(std::memory_order_relaxed) * 11 / 10,
                    RenderWorkers());
  last_page_bytes_.store(response.body.size(), std::memory_order_relaxed);
  return response;
}

}  // namespace kpulse
