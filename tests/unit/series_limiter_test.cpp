#include "collect/series_limiter.h"

#include <gtest/gtest.h>

#include <string>

namespace kpulse {
namespace {

using namespace std::chrono_literals;

TEST(SeriesLimiter, IdentitiesPastTheCapFold) {
  SeriesLimiter<std::string> limiter("family", SeriesPolicy{3, 600s});
  const auto now = std::chrono::steady_clock::time_point{} + 1h;
  const auto fates = limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, now);
  EXPECT_EQ(fates[0], SeriesFate::kVisible);
  EXPECT_EQ(fates[1], SeriesFate::kVisible);
  EXPECT_EQ(fates[2], SeriesFate::kFolded);  // 3 series: 2 plus the reserved <other>
  EXPECT_EQ(limiter.folded_total(), 1u);
}

}  // namespace
}  // namespace kpulse
