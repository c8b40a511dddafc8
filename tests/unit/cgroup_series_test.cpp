#include "collect/cgroup_series.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fakes.h"

namespace kpulse {
namespace {

using namespace std::chrono_literals;
using Series = CgroupSeries<uint64_t>;
using Entry = Series::Entry;
using Result = Series::Result;

// The n-th scrape, 15 s apart.
std::chrono::steady_clock::time_point T(int n) {
  return std::chrono::steady_clock::time_point{} + 1h + n * 15s;
}

// The value of the exported series of label set `cgroup` and `sub`, nullopt when not exported.
std::optional<uint64_t> ValueOf(const Result& result, std::string_view cgroup, uint32_t sub = 0) {
  std::optional<uint64_t> value;
  for (const Series::Series& series : result.series) {
    if (series.labels->cgroup != cgroup || series.sub != sub) continue;
    EXPECT_FALSE(value.has_value()) << "two series for " << cgroup << " sub " << sub;
    value = series.value;
  }
  return value;
}

uint64_t At(const std::map<uint32_t, uint64_t>& values, uint32_t sub = 0) {
  auto it = values.find(sub);
  return it == values.end() ? 0 : it->second;
}

TEST(CgroupSeries, EntriesOfOneLabelSetAreSummed) {
  CgroupSeries<uint64_t> series("family", SeriesPolicy{});
  const auto labeler =
      test::Paths({{1, "/a.slice/x"}, {2, "/a.slice/y"}}, CgroupLabelPolicy{1, {}, {}});
  const auto result =
      series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *labeler, std::chrono::steady_clock::now());
  ASSERT_EQ(result.series.size(), 1u);  // <other> only appears once something is in it
  EXPECT_EQ(result.series[0].labels->cgroup, "/a.slice");
  EXPECT_EQ(result.series[0].value, 12u);
}

TEST(CgroupSeries, SeveralIdsAtOnePathAreOneSeriesPerSub) {
  Series series("family", SeriesPolicy{});
  const auto labeler =
      test::Paths({{1, "/system.slice/nginx.service"}, {2, "/system.slice/nginx.service"}});
  const Result result =
      series.Update({{1, 0, 5}, {2, 0, 7}, {1, 1, 1}, {2, 1, 2}}, {}, {}, *labeler, T(0));
  EXPECT_EQ(result.series.size(), 2u);
  EXPECT_EQ(ValueOf(result, "/system.slice/nginx.service", 0), 12u);
  EXPECT_EQ(ValueOf(result, "/system.slice/nginx.service", 1), 3u);
  EXPECT_EQ(At(result.held, 0), 12u);
  EXPECT_EQ(At(result.held, 1), 3u);
  EXPECT_TRUE(result.deleted.empty());
}

TEST(CgroupSeries, DistinctLabelSetsAreSeparateSeriesOrderedByLabel) {
  Series series("family", SeriesPolicy{});
  const auto labeler =
      test::Paths({{1, "/system.slice/b.service"}, {2, "/system.slice/a.service"}});
  const Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *labeler, T(0));
  ASSERT_EQ(result.series.size(), 2u);
  EXPECT_EQ(result.series[0].labels->cgroup, "/system.slice/a.service");
  EXPECT_EQ(result.series[0].value, 7u);
  EXPECT_EQ(result.series[1].labels->cgroup, "/system.slice/b.service");
  EXPECT_EQ(result.series[1].value, 5u);
  EXPECT_EQ(result.series[0].labels->unit, "a.service");  // labels come from the labeler
}

TEST(CgroupSeries, RemovedCgroupCountsIntoDeletedUntilRetiredThenKeepsExactlyThatValue) {
  Series series("family", SeriesPolicy{});
  const auto alive = test::Paths({{1, "/system.slice/job.service"}});
  const auto gone = test::Paths({});
  Result result = series.Update({{1, 0, 10}}, {}, {}, *alive, T(0));
  EXPECT_EQ(ValueOf(result, "/system.slice/job.service"), 10u);
  EXPECT_EQ(At(result.deleted), 0u);
  // Removed: no longer resolvable, but still in the kernel map.
  result = series.Update({{1, 0, 12}}, {}, {}, *gone, T(1));
  EXPECT_EQ(ValueOf(result, "/system.slice/job.service"), std::nullopt);
  EXPECT_EQ(At(result.deleted), 12u);
  EXPECT_EQ(At(result.held), 0u);
  result = series.Update({{1, 0, 13}}, {}, {}, *gone, T(2));  // a late count before the sweep
  EXPECT_EQ(At(result.deleted), 13u);
  // Retired: its final count, given once.
  result = series.Update({}, {{1, 0, 13}}, {}, *gone, T(3));
  EXPECT_EQ(At(result.deleted), 13u);
  for (int n = 4; n < 8; ++n) {
    result = series.Update({}, {}, {}, *gone, T(n));
    EXPECT_EQ(At(result.deleted), 13u) << "update " << n;
  }
  EXPECT_TRUE(result.series.empty());
}

TEST(CgroupSeries, CgroupRetiredStraightFromLiveMovesToDeleted) {
  Series series("family", SeriesPolicy{});
  const auto alive = test::Paths({{1, "/system.slice/job.service"}});
  const auto gone = test::Paths({});
  series.Update({{1, 0, 10}}, {}, {}, *alive, T(0));
  Result result = series.Update({}, {{1, 0, 11}}, {}, *gone, T(1));
  EXPECT_EQ(At(result.deleted), 11u);
  EXPECT_TRUE(result.series.empty());
  result = series.Update({}, {}, {}, *gone, T(2));
  EXPECT_EQ(At(result.deleted), 11u);
}

TEST(CgroupSeries, RemovedMemberOfAFoldedLabelSetKeepsItsCountsInThatSeries) {
  Series series("family", SeriesPolicy{});
  const CgroupLabelPolicy depth1{1, {}, {}};
  const auto both =
      test::Paths({{1, "/batch.slice/a.service"}, {2, "/batch.slice/b.service"}}, depth1);
  const auto only1 = test::Paths({{1, "/batch.slice/a.service"}}, depth1);
  const auto none = test::Paths({}, depth1);
  Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *both, T(0));
  EXPECT_EQ(ValueOf(result, "/batch.slice"), 12u);
  // 2 is removed (still in the map), then retired: its counts stay in /batch.slice.
  result = series.Update({{1, 0, 6}, {2, 0, 8}}, {}, {}, *only1, T(1));
  EXPECT_EQ(ValueOf(result, "/batch.slice"), 14u);
  EXPECT_EQ(At(result.deleted), 0u);
  result = series.Update({{1, 0, 6}}, {{2, 0, 8}}, {}, *only1, T(2));
  EXPECT_EQ(ValueOf(result, "/batch.slice"), 14u);
  EXPECT_EQ(At(result.deleted), 0u);
  result = series.Update({{1, 0, 9}}, {}, {}, *only1, T(3));
  EXPECT_EQ(ValueOf(result, "/batch.slice"), 17u);
  EXPECT_EQ(At(result.deleted), 0u);
  // The last member goes: now, and only now, the whole total moves to deleted.
  result = series.Update({{1, 0, 9}}, {}, {}, *none, T(4));
  EXPECT_EQ(ValueOf(result, "/batch.slice"), std::nullopt);
  EXPECT_EQ(At(result.deleted), 17u);
  result = series.Update({}, {{1, 0, 9}}, {}, *none, T(5));
  EXPECT_EQ(At(result.deleted), 17u);
  result = series.Update({}, {}, {}, *none, T(6));
  EXPECT_EQ(At(result.deleted), 17u);
}

TEST(CgroupSeries, RetiredRecordOfAnIdNeverSeenGoesToDeleted) {
  Series series("family", SeriesPolicy{});
  const auto labeler = test::Paths({{1, "/system.slice/nginx.service"}});
  Result result = series.Update({{1, 0, 5}}, {{99, 0, 4}}, {}, *labeler, T(0));
  EXPECT_EQ(ValueOf(result, "/system.slice/nginx.service"), 5u);
  EXPECT_EQ(At(result.deleted), 4u);
  result = series.Update({{1, 0, 5}}, {}, {}, *labeler, T(1));
  EXPECT_EQ(At(result.deleted), 4u);
}

TEST(CgroupSeries, LiveEntryOfAnIdNeverLabelledCountsIntoDeleted) {
  Series series("family", SeriesPolicy{});
  const auto labeler = test::Paths({});
  Result result = series.Update({{7, 0, 3}}, {}, {}, *labeler, T(0));
  EXPECT_EQ(At(result.deleted), 3u);
  EXPECT_TRUE(result.series.empty());
  result = series.Update({}, {{7, 0, 3}}, {}, *labeler, T(1));
  EXPECT_EQ(At(result.deleted), 3u);
}

TEST(CgroupSeries, OverflowEntriesAreTheOtherSeries) {
  Series series("family", SeriesPolicy{});
  const auto labeler = test::Paths({{1, "/system.slice/nginx.service"}});
  const Result result = series.Update({{1, 0, 5}}, {}, {{0, 0, 3}, {0, 1, 4}}, *labeler, T(0));
  EXPECT_EQ(ValueOf(result, kOtherCgroup, 0), 3u);
  EXPECT_EQ(ValueOf(result, kOtherCgroup, 1), 4u);
  EXPECT_EQ(ValueOf(result, "/system.slice/nginx.service"), 5u);
  EXPECT_EQ(At(result.held, 0), 8u);
  EXPECT_EQ(At(result.held, 1), 4u);
  EXPECT_TRUE(result.deleted.empty());
}

TEST(CgroupSeries, DeniedCgroupsAreSummedIntoOther) {
  Series series("family", SeriesPolicy{});
  const auto labeler = test::Paths(
      {{1, "/system.slice/nginx.service"}, {2, "/user.slice/a.scope"}, {3, "/user.slice/b.scope"}},
      CgroupLabelPolicy{0, {}, {"/user\\.slice/.*"}});
  const Result result =
      series.Update({{1, 0, 5}, {2, 0, 7}, {3, 0, 1}}, {}, {{0, 0, 2}}, *labeler, T(0));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 10u);
  EXPECT_EQ(ValueOf(result, "/system.slice/nginx.service"), 5u);
  EXPECT_EQ(At(result.held), 15u);
}

TEST(CgroupSeries, CapFoldsLabelSetsIntoOther) {
  Series series("family", SeriesPolicy{2, 600s});  // one label set plus <other>
  const auto labeler =
      test::Paths({{1, "/system.slice/a.service"}, {2, "/system.slice/b.service"}});
  const Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *labeler, T(0));
  EXPECT_EQ(ValueOf(result, "/system.slice/a.service"), 5u);
  EXPECT_EQ(ValueOf(result, "/system.slice/b.service"), std::nullopt);
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 7u);
  EXPECT_EQ(At(result.held), 12u);
  EXPECT_EQ(result.folded_total, 1u);
}

TEST(CgroupSeries, FoldedCgroupRetiredStaysInOther) {
  Series series("family", SeriesPolicy{2, 600s});
  const auto both = test::Paths({{1, "/system.slice/a.service"}, {2, "/system.slice/b.service"}});
  const auto only_a = test::Paths({{1, "/system.slice/a.service"}});
  Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *both, T(0));
  ASSERT_EQ(ValueOf(result, kOtherCgroup), 7u);
  result = series.Update({{1, 0, 5}}, {{2, 0, 8}}, {}, *only_a, T(1));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 8u);
  EXPECT_EQ(At(result.deleted), 0u);
  for (int n = 2; n < 5; ++n) {
    result = series.Update({{1, 0, 5}}, {}, {}, *only_a, T(n));
    EXPECT_EQ(ValueOf(result, kOtherCgroup), 8u) << "update " << n;
    EXPECT_EQ(At(result.deleted), 0u) << "update " << n;
  }
}

TEST(CgroupSeries, FoldedCgroupRemovedThenRetiredStaysInOther) {
  // Regression, once a bug: a removed cgroup of a cap-folded label set loses its "folded" mark one update after its
  // label set's last live member goes (Update() step 6 recomputes Member::folded and
  // folded_keys_ from this update's groups only), so its later live entries and its retired
  // record go to `deleted` instead of <other>: <other> goes backwards, `deleted` jumps.
  Series series("family", SeriesPolicy{2, 600s});
  const auto both = test::Paths({{1, "/system.slice/a.service"}, {2, "/system.slice/b.service"}});
  const auto only_a = test::Paths({{1, "/system.slice/a.service"}});
  Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *both, T(0));
  ASSERT_EQ(ValueOf(result, kOtherCgroup), 7u);
  // Removed, still in the kernel map: it stays in <other>.
  result = series.Update({{1, 0, 5}, {2, 0, 9}}, {}, {}, *only_a, T(1));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 9u);
  EXPECT_EQ(At(result.deleted), 0u);
  // Retired: still in <other>, and not in deleted.
  result = series.Update({{1, 0, 5}}, {{2, 0, 9}}, {}, *only_a, T(2));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 9u);
  EXPECT_EQ(At(result.deleted), 0u);
  result = series.Update({{1, 0, 5}}, {}, {}, *only_a, T(3));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 9u);
  EXPECT_EQ(At(result.deleted), 0u);
}

TEST(CgroupSeries, FoldedCgroupRemovedForSeveralUpdatesStaysInOther) {
  // Regression, once a bug: a removed cgroup of a cap-folded label set loses its "folded" mark one update after its
  // label set's last live member goes (Update() step 6 recomputes Member::folded and
  // folded_keys_ from this update's groups only), so its later live entries and its retired
  // record go to `deleted` instead of <other>: <other> goes backwards, `deleted` jumps.
  Series series("family", SeriesPolicy{2, 600s});
  const auto both = test::Paths({{1, "/system.slice/a.service"}, {2, "/system.slice/b.service"}});
  const auto only_a = test::Paths({{1, "/system.slice/a.service"}});
  Result result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *both, T(0));
  ASSERT_EQ(ValueOf(result, kOtherCgroup), 7u);
  // Removed, and the sweeper takes a while: it stays in the kernel map for three scrapes.
  for (int n = 1; n <= 3; ++n) {
    result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *only_a, T(n));
    EXPECT_EQ(ValueOf(result, kOtherCgroup), 7u) << "update " << n;
    EXPECT_EQ(At(result.deleted), 0u) << "update " << n;
  }
}

TEST(CgroupSeries, LastMemberOfACapFoldedLabelSetRemovedThenRetiredStaysInOther) {
  // Regression, once a bug: a removed cgroup of a cap-folded label set loses its "folded" mark one update after its
  // label set's last live member goes (Update() step 6 recomputes Member::folded and
  // folded_keys_ from this update's groups only), so its later live entries and its retired
  // record go to `deleted` instead of <other>: <other> goes backwards, `deleted` jumps.
  Series series("family", SeriesPolicy{2, 600s});
  const CgroupLabelPolicy depth1{1, {}, {}};
  const auto all = test::Paths(
      {{1, "/a.slice/x.service"}, {2, "/b.slice/y.service"}, {3, "/b.slice/z.service"}}, depth1);
  const auto only3 = test::Paths({{1, "/a.slice/x.service"}, {3, "/b.slice/z.service"}}, depth1);
  const auto only_a = test::Paths({{1, "/a.slice/x.service"}}, depth1);
  Result result = series.Update({{1, 0, 5}, {2, 0, 7}, {3, 0, 1}}, {}, {}, *all, T(0));
  ASSERT_EQ(ValueOf(result, kOtherCgroup), 8u);  // /b.slice folded
  result = series.Update({{1, 0, 5}, {3, 0, 1}}, {{2, 0, 7}}, {}, *only3, T(1));
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 8u);
  result = series.Update({{1, 0, 5}, {3, 0, 2}}, {}, {}, *only_a, T(2));  // 3 removed
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 9u);
  EXPECT_EQ(At(result.deleted), 0u);
  result = series.Update({{1, 0, 5}}, {{3, 0, 2}}, {}, *only_a, T(3));  // and retired
  EXPECT_EQ(ValueOf(result, kOtherCgroup), 9u);
  EXPECT_EQ(At(result.deleted), 0u);
}

TEST(CgroupSeries, ServiceRestartContinuesTheSameSeries) {
  Series series("family", SeriesPolicy{});
  const std::string path = "/system.slice/nginx.service";
  Result result = series.Update({{1, 0, 100}}, {}, {}, *test::Paths({{1, path}}), T(0));
  EXPECT_EQ(ValueOf(result, path), 100u);
  // The new cgroup (id 2) appears at the same path while the old one is retired.
  result = series.Update({{2, 0, 3}}, {{1, 0, 101}}, {}, *test::Paths({{2, path}}), T(1));
  EXPECT_EQ(ValueOf(result, path), 104u);
  EXPECT_EQ(At(result.deleted), 0u);
  result = series.Update({{2, 0, 5}}, {}, {}, *test::Paths({{2, path}}), T(2));
  EXPECT_EQ(ValueOf(result, path), 106u);
}

TEST(CgroupSeries, ServiceRestartWithTheOldIdStillInTheMapContinuesTheSameSeries) {
  Series series("family", SeriesPolicy{});
  const std::string path = "/system.slice/nginx.service";
  const auto new_only = test::Paths({{2, path}});
  Result result = series.Update({{1, 0, 100}}, {}, {}, *test::Paths({{1, path}}), T(0));
  EXPECT_EQ(ValueOf(result, path), 100u);
  result = series.Update({{1, 0, 100}, {2, 0, 3}}, {}, {}, *new_only, T(1));
  EXPECT_EQ(ValueOf(result, path), 103u);
  result = series.Update({{2, 0, 4}}, {{1, 0, 100}}, {}, *new_only, T(2));
  EXPECT_EQ(ValueOf(result, path), 104u);
  EXPECT_EQ(At(result.deleted), 0u);
}

TEST(CgroupSeries, DeletedNeverDecreasesWhenARemovedCgroupsLabelSetComesBackBeforeItsRetirement) {
  // Regression, once a bug: a removed cgroup's counts, once reported in `deleted` (its label set had no live
  // member), move back into the series when a cgroup appears in that label set before the removed
  // one is retired (Update() steps 2 and 4 route by alive.contains(key) again): `deleted` goes
  // backwards.
  // A restart with a gap: the old cgroup is removed (its counts go to deleted) and a new cgroup
  // appears at the same path before the old one is retired.
  Series series("family", SeriesPolicy{});
  const std::string path = "/system.slice/nginx.service";
  const auto new_only = test::Paths({{2, path}});
  series.Update({{1, 0, 100}}, {}, {}, *test::Paths({{1, path}}), T(0));
  Result result = series.Update({{1, 0, 100}}, {}, {}, *test::Paths({}), T(1));
  ASSERT_EQ(At(result.deleted), 100u);
  result = series.Update({{1, 0, 100}, {2, 0, 3}}, {}, {}, *new_only, T(2));
  EXPECT_EQ(At(result.deleted), 100u);  // a counter: once reported there, it must stay
  EXPECT_EQ(At(result.held) + At(result.deleted), 103u);
  result = series.Update({{2, 0, 3}}, {{1, 0, 100}}, {}, *new_only, T(3));
  EXPECT_EQ(At(result.deleted), 100u);
  EXPECT_EQ(At(result.held) + At(result.deleted), 103u);
}

TEST(CgroupSeries, HiddenSeriesStillCountInHeld) {
  Series series("family", SeriesPolicy{100, 600s});
  const auto labeler =
      test::Paths({{1, "/system.slice/idle.service"}, {2, "/system.slice/busy.service"}});
  series.Update({{1, 0, 5}, {2, 0, 1}}, {}, {}, *labeler, T(0));
  const Result result = series.Update({{1, 0, 5}, {2, 0, 2}}, {}, {}, *labeler, T(0) + 601s);
  EXPECT_EQ(ValueOf(result, "/system.slice/idle.service"), std::nullopt);
  EXPECT_EQ(ValueOf(result, "/system.slice/busy.service"), 2u);
  EXPECT_EQ(At(result.held), 7u);
  EXPECT_EQ(At(result.deleted), 0u);
}

// A kernel with cgroup churn: cgroups appear at paths of a small pool, count, are removed (gone
// from the labeler, still in the map) and later retired (their final count given once), or
// retired straight away; an overflow counter grows now and then. Deterministic (fixed seed, raw
// engine output only).
class Churn {
 public:
  static constexpr uint32_t kSubs = 2;

  explicit Churn(uint32_t seed) : rng_(seed) {}

  struct Step {
    std::vector<Entry> live, retired, overflow;
    std::shared_ptr<const CgroupLabeler> labeler;
    std::map<uint32_t, uint64_t> given;  // live now + retired ever + overflow now, by sub
    std::set<std::string> alive;         // label sets (depth 1) with a cgroup that is not removed
  };

  Step Next(const CgroupLabelPolicy& policy) {
    static constexpr std::array<std::string_view, 8> kPaths = {
        "/a.slice/x.service", "/a.slice/y.service", "/b.slice/z.service",  "/c.slice/w.service",
        "/d.slice/v.service", "/e.slice/u.service", "/user.slice/s.scope", "/f.slice/t.service"};
    Step step;
    for (auto& [id, cgroup] : cgroups_) {
      if (id % 3 == 0) continue;  // some never change: idle series
      for (uint64_t& value : cgroup.values) value += Roll(4);
    }
    if (Roll(3) != 0) {
      cgroups_[next_id_++] = {
          std::string(kPaths[Roll(kPaths.size())]), {Roll(10), Roll(10)}, false};
    }
    std::vector<uint64_t> ids;
    for (const auto& [id, cgroup] : cgroups_) ids.push_back(id);
    for (uint64_t id : ids) {
      Cgroup& cgroup = cgroups_.at(id);
      const uint64_t roll = Roll(10);
      if (cgroup.removed ? roll < 5 : roll == 0) {  // retired (removed before, or straight away)
        for (uint32_t sub = 0; sub < kSubs; ++sub) {
          step.retired.push_back({id, sub, cgroup.values[sub]});
          retired_[sub] += cgroup.values[sub];
        }
        cgroups_.erase(id);
      } else if (!cgroup.removed && roll == 1) {
        cgroup.removed = true;
      }
    }
    if (Roll(4) == 0) overflow_ += Roll(5);
    std::map<uint64_t, std::string> paths;
    for (const auto& [id, cgroup] : cgroups_) {
      if (!cgroup.removed) {
        paths[id] = cgroup.path;
        step.alive.insert(AncestorAtDepth(cgroup.path, 1));
      }
      for (uint32_t sub = 0; sub < kSubs; ++sub) {
        step.live.push_back({id, sub, cgroup.values[sub]});
        step.given[sub] += cgroup.values[sub];
      }
    }
    step.overflow.push_back({0, 0, overflow_});
    step.given[0] += overflow_;
    for (uint32_t sub = 0; sub < kSubs; ++sub) step.given[sub] += retired_[sub];
    step.labeler = test::Paths(std::move(paths), policy);
    return step;
  }

 private:
  struct Cgroup {
    std::string path;
    uint64_t values[kSubs];
    bool removed;
  };

  uint64_t Roll(uint64_t n) { return rng_() % n; }

  std::mt19937 rng_;
  std::map<uint64_t, Cgroup> cgroups_;
  uint64_t next_id_ = 1;
  uint64_t retired_[kSubs] = {};
  uint64_t overflow_ = 0;
};

TEST(CgroupSeries, HeldPlusDeletedIsEverythingEverGivenUnderChurn) {
  const CgroupLabelPolicy policy{1, {}, {"/user\\.slice"}};
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    Series series("family", SeriesPolicy{7, 60s});
    Churn churn(seed);
    bool saw_hidden = false;
    Result result;
    for (int n = 0; n < 300; ++n) {
      const Churn::Step step = churn.Next(policy);
      result = series.Update(step.live, step.retired, step.overflow, *step.labeler, T(0) + n * 20s);
      for (uint32_t sub = 0; sub < Churn::kSubs; ++sub) {
        ASSERT_EQ(At(result.held, sub) + At(result.deleted, sub), At(step.given, sub))
            << "seed " << seed << ", update " << n << ", sub " << sub;
      }
      uint64_t exported = 0;
      for (const Series::Series& one : result.series) exported += one.value;
      saw_hidden |= exported < At(result.held, 0) + At(result.held, 1);
    }
    // The churn reaches every path: hidden series, cap folding, removed cgroups.
    EXPECT_TRUE(saw_hidden) << "seed " << seed;
    EXPECT_GT(result.folded_total, 0u) << "seed " << seed;
    EXPECT_GT(At(result.deleted), 0u) << "seed " << seed;
  }
}

TEST(CgroupSeries, OtherAndDeletedNeverDecreaseUnderChurn) {
  // Regression, once a bug: both of the above (see FoldedCgroupRemovedForSeveralUpdatesStaysInOther and
  // DeletedNeverDecreasesWhenARemovedCgroupsLabelSetComesBackBeforeItsRetirement).
  const CgroupLabelPolicy policy{1, {}, {"/user\\.slice"}};
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    Series series("family", SeriesPolicy{7, 60s});
    Churn churn(seed);
    std::map<uint32_t, uint64_t> other, deleted;
    for (int n = 0; n < 300; ++n) {
      const Churn::Step step = churn.Next(policy);
      const Result result =
          series.Update(step.live, step.retired, step.overflow, *step.labeler, T(0) + n * 20s);
      for (uint32_t sub = 0; sub < Churn::kSubs; ++sub) {
        const uint64_t other_now = ValueOf(result, kOtherCgroup, sub).value_or(0);
        ASSERT_GE(other_now, other[sub]) << "<other>: seed " << seed << ", update " << n;
        ASSERT_GE(At(result.deleted, sub), deleted[sub])
            << "deleted: seed " << seed << ", update " << n;
        other[sub] = other_now;
        deleted[sub] = At(result.deleted, sub);
      }
    }
  }
}

TEST(CgroupSeries, SeriesNeverDecreaseWhileTheirLabelSetLivesUnderChurn) {
  const CgroupLabelPolicy policy{1, {}, {"/user\\.slice"}};
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    Series series("family", SeriesPolicy{7, 60s});
    Churn churn(seed);
    std::map<std::pair<std::string, uint32_t>, uint64_t> last;  // last exported value
    for (int n = 0; n < 300; ++n) {
      const Churn::Step step = churn.Next(policy);
      const Result result =
          series.Update(step.live, step.retired, step.overflow, *step.labeler, T(0) + n * 20s);
      std::erase_if(last, [&](const auto& item) { return !step.alive.contains(item.first.first); });
      for (const Series::Series& exported : result.series) {
        if (exported.labels->cgroup == kOtherCgroup) continue;
        uint64_t& previous = last[{exported.labels->cgroup, exported.sub}];
        ASSERT_GE(exported.value, previous)
            << exported.labels->cgroup << ": seed " << seed << ", update " << n;
        previous = exported.value;
      }
    }
  }
}

}  // namespace
}  // namespace kpulse
