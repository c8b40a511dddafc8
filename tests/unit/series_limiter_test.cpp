#include "collect/series_limiter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

namespace kpulse {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Limiter = SeriesLimiter<std::string>;

constexpr SeriesFate kVisible = SeriesFate::kVisible;
constexpr SeriesFate kHidden = SeriesFate::kHidden;
constexpr SeriesFate kFolded = SeriesFate::kFolded;

// A clock the test advances by hand.
struct FakeClock {
  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::time_point{} + 1h;
  void Advance(std::chrono::steady_clock::duration by) { now += by; }
};

MATCHER_P2(IsDeparted, key, folded, "") { return arg.key == key && arg.folded == folded; }

TEST(SeriesLimiter, IdentitiesPastTheCapFold) {
  SeriesLimiter<std::string> limiter("family", SeriesPolicy{3, 600s});
  const auto now = std::chrono::steady_clock::time_point{} + 1h;
  const auto fates = limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, now);
  EXPECT_EQ(fates[0], SeriesFate::kVisible);
  EXPECT_EQ(fates[1], SeriesFate::kVisible);
  EXPECT_EQ(fates[2], SeriesFate::kFolded);  // 3 series: 2 plus the reserved <other>
  EXPECT_EQ(limiter.folded_total(), 1u);
}

TEST(SeriesLimiter, CapCountsSeriesNotIdentities) {
  Limiter limiter("family", SeriesPolicy{5, 600s});
  FakeClock clock;
  // Budget 5 - 1 reserved = 4 series: two identities of two series each.
  EXPECT_THAT(limiter.Update({{"a", 1, 2}, {"b", 1, 2}, {"c", 1, 2}}, 1, clock.now),
              ElementsAre(kVisible, kVisible, kFolded));
  EXPECT_EQ(limiter.folded_total(), 1u);
}

TEST(SeriesLimiter, ReservedSeriesComeOutOfTheCap) {
  Limiter limiter("family", SeriesPolicy{4, 600s});
  FakeClock clock;
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 2, clock.now),
              ElementsAre(kVisible, kVisible, kFolded));
}

TEST(SeriesLimiter, ReservedAtOrAboveTheCapFoldsEverything) {
  Limiter limiter("family", SeriesPolicy{2, 600s});
  FakeClock clock;
  EXPECT_THAT(limiter.Update({{"a", 1, 1}}, 2, clock.now), ElementsAre(kFolded));
}

TEST(SeriesLimiter, IncumbentsKeepTheirPlaceOverNewcomersWhateverTheInputOrder) {
  Limiter limiter("family", SeriesPolicy{3, 600s});
  FakeClock clock;
  EXPECT_THAT(limiter.Update({{"b", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kVisible, kVisible));
  clock.Advance(15s);
  // The newcomer comes first in the input, and still folds.
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kFolded, kVisible, kVisible));
  clock.Advance(15s);
  EXPECT_THAT(limiter.Update({{"c", 1, 1}, {"a", 1, 1}, {"b", 1, 1}}, 1, clock.now),
              ElementsAre(kVisible, kFolded, kVisible));
}

TEST(SeriesLimiter, FoldingIsStickyWhilePresentEvenWhenCapacityFreesUp) {
  Limiter limiter("family", SeriesPolicy{3, 600s});
  FakeClock clock;
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kVisible, kVisible, kFolded));
  clock.Advance(15s);
  // a and b are gone: there is room now, but c's counts must not move from <other>.
  EXPECT_THAT(limiter.Update({{"c", 2, 1}}, 1, clock.now), ElementsAre(kFolded));
  EXPECT_THAT(limiter.departed(), ElementsAre(IsDeparted("a", false), IsDeparted("b", false)));
  clock.Advance(15s);
  EXPECT_THAT(limiter.Update({{"c", 3, 1}}, 1, clock.now), ElementsAre(kFolded));
  EXPECT_EQ(limiter.folded_total(), 1u);  // one folding, however long it lasts
}

TEST(SeriesLimiter, FoldedIdentityDepartsWithFoldedTrue) {
  Limiter limiter("family", SeriesPolicy{2, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);
  clock.Advance(15s);
  limiter.Update({{"a", 1, 1}}, 1, clock.now);
  EXPECT_THAT(limiter.departed(), ElementsAre(IsDeparted("b", true)));
}

TEST(SeriesLimiter, FoldedTotalCountsEachFolding) {
  Limiter limiter("family", SeriesPolicy{2, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);
  EXPECT_EQ(limiter.folded_total(), 1u);
  clock.Advance(15s);
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);  // still folded: not again
  EXPECT_EQ(limiter.folded_total(), 1u);
  clock.Advance(15s);
  limiter.Update({{"a", 1, 1}}, 1, clock.now);  // b departs
  EXPECT_EQ(limiter.folded_total(), 1u);
  clock.Advance(15s);
  // b comes back to a full family and folds again; c folds too.
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kVisible, kFolded, kFolded));
  EXPECT_EQ(limiter.folded_total(), 3u);
}

TEST(SeriesLimiter, UnchangedIdentityIsHiddenOnlyAfterTheIdleTtl) {
  Limiter limiter("family", SeriesPolicy{100, 600s});
  FakeClock clock;
  EXPECT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kVisible));
  clock.Advance(600s);
  EXPECT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kVisible));
  clock.Advance(1s);
  EXPECT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kHidden));
  clock.Advance(1h);
  EXPECT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kHidden));
}

TEST(SeriesLimiter, HiddenIdentityShowsAgainWhenItsSignatureChanges) {
  Limiter limiter("family", SeriesPolicy{100, 600s});
  FakeClock clock;
  limiter.Update({{"a", 7, 1}}, 1, clock.now);
  clock.Advance(601s);
  ASSERT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kHidden));
  clock.Advance(30s);
  EXPECT_THAT(limiter.Update({{"a", 8, 1}}, 1, clock.now), ElementsAre(kVisible));
  // The TTL runs again from that change.
  clock.Advance(600s);
  EXPECT_THAT(limiter.Update({{"a", 8, 1}}, 1, clock.now), ElementsAre(kVisible));
  clock.Advance(1s);
  EXPECT_THAT(limiter.Update({{"a", 8, 1}}, 1, clock.now), ElementsAre(kHidden));
  EXPECT_EQ(limiter.folded_total(), 0u);
}

TEST(SeriesLimiter, IdentityThatKeepsChangingIsNeverHidden) {
  Limiter limiter("family", SeriesPolicy{100, 600s});
  FakeClock clock;
  for (uint64_t signature = 0; signature < 10; ++signature) {
    EXPECT_THAT(limiter.Update({{"a", signature, 1}}, 1, clock.now), ElementsAre(kVisible));
    clock.Advance(500s);
  }
}

TEST(SeriesLimiter, IdleTtlZeroNeverHides) {
  Limiter limiter("family", SeriesPolicy{100, 0s});
  FakeClock clock;
  limiter.Update({{"a", 7, 1}}, 1, clock.now);
  clock.Advance(24h * 365);
  EXPECT_THAT(limiter.Update({{"a", 7, 1}}, 1, clock.now), ElementsAre(kVisible));
}

TEST(SeriesLimiter, HiddenIdentitiesDoNotConsumeTheCap) {
  Limiter limiter("family", SeriesPolicy{3, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);
  clock.Advance(601s);
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}, {"d", 1, 1}}, 1, clock.now),
              ElementsAre(kHidden, kHidden, kVisible, kVisible));
  EXPECT_EQ(limiter.folded_total(), 0u);
}

TEST(SeriesLimiter, ResumedIdentityFoldsWhenTheCapIsFull) {
  Limiter limiter("family", SeriesPolicy{3, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);
  clock.Advance(601s);
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}, {"d", 1, 1}}, 1, clock.now);
  clock.Advance(15s);
  // a changes again, but c and d hold the two places now.
  EXPECT_THAT(limiter.Update({{"a", 2, 1}, {"b", 1, 1}, {"c", 1, 1}, {"d", 1, 1}}, 1, clock.now),
              ElementsAre(kFolded, kHidden, kVisible, kVisible));
  EXPECT_EQ(limiter.folded_total(), 1u);
  clock.Advance(15s);  // and stays folded, as any folding does
  EXPECT_THAT(limiter.Update({{"a", 3, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kFolded, kHidden, kVisible));
}

TEST(SeriesLimiter, AbsentIdentitiesAreDepartedOnceThenForgotten) {
  Limiter limiter("family", SeriesPolicy{100, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}}, 1, clock.now);
  EXPECT_THAT(limiter.departed(), IsEmpty());
  clock.Advance(15s);
  limiter.Update({{"a", 1, 1}}, 1, clock.now);
  EXPECT_THAT(limiter.departed(), ElementsAre(IsDeparted("b", false)));
  clock.Advance(15s);
  limiter.Update({{"a", 1, 1}}, 1, clock.now);
  EXPECT_THAT(limiter.departed(), IsEmpty());
}

TEST(SeriesLimiter, ForgottenIdentityComesBackAsNew) {
  Limiter limiter("family", SeriesPolicy{3, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}, {"b", 1, 1}, {"c", 1, 1}}, 1, clock.now);  // c folds
  clock.Advance(601s);
  ASSERT_THAT(limiter.Update({{"a", 1, 1}}, 1, clock.now), ElementsAre(kHidden));
  clock.Advance(15s);
  limiter.Update({}, 1, clock.now);  // all forgotten
  clock.Advance(15s);
  // Same signature as before, yet a is not hidden (its idle clock starts again), and c no
  // longer folded.
  EXPECT_THAT(limiter.Update({{"a", 1, 1}, {"c", 1, 1}}, 1, clock.now),
              ElementsAre(kVisible, kVisible));
}

TEST(SeriesLimiter, DepartedIdentityFreesItsPlace) {
  Limiter limiter("family", SeriesPolicy{2, 600s});
  FakeClock clock;
  limiter.Update({{"a", 1, 1}}, 1, clock.now);
  clock.Advance(15s);
  EXPECT_THAT(limiter.Update({{"b", 1, 1}}, 1, clock.now), ElementsAre(kVisible));
  EXPECT_THAT(limiter.departed(), ElementsAre(IsDeparted("a", false)));
}

}  // namespace
}  // namespace kpulse
