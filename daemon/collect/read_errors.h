#pragma once

#include <prometheus/metric_family.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <exception>
#include <optional>
#include <string>
#include <tl/expected.hpp>
#include <utility>

#include "collect/family_builder.h"

namespace kpulse {

/// A probe's failed map reads at scrape time: logged, counted, and exported as a counter family
/// so that a broken read shows on the page instead of silently missing series. Thread-safe.
class ReadErrors {
 public:
  ReadErrors(std::string probe, std::string metric_name)
      : probe_(std::move(probe)), metric_name_(std::move(metric_name)) {}

  /// The value `read()` returns, or nullopt after logging and counting its error. An exception
  /// from `read` (allocation failure) is an error too: Collect() must not throw.
  template <typename Read>
  auto Take(Read read) const -> std::optional<typename decltype(read())::value_type> {
    std::string error;
    try {
      auto result = read();
      if (result) {
        last_failed_ = false;
        return std::move(*result);
      }
      error = result.error();
    } catch (const std::exception& e) {
      error = e.what();
    }
    ++count_;
    last_failed_ = true;
    spdlog::error("{}: {}", probe_, error);
    return std::nullopt;
  }

  /// Whether the latest read failed (false before the first).
  bool LastFailed() const { return last_failed_; }

  prometheus::MetricFamily Family() const {
    auto family =
        MakeFamily(metric_name_, "Scrapes whose read of the " + probe_ + " BPF maps failed.",
                   prometheus::MetricType::Counter);
    AddSample(family, {}, static_cast<double>(count_.load()));
    return family;
  }

 private:
  std::string probe_;
  std::string metric_name_;
  mutable std::atomic<uint64_t> count_{0};
  mutable std::atomic<bool> last_failed_{false};
};

}  // namespace kpulse
