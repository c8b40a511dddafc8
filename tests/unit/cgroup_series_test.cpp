#include "collect/cgroup_series.h"

#include <gtest/gtest.h>

#include "fakes.h"

namespace kpulse {
namespace {

TEST(CgroupSeries, EntriesOfOneLabelSetAreSummed) {
  CgroupSeries<uint64_t> series("family", SeriesPolicy{});
  const auto labeler = test::Paths({{1, "/a.slice/x"}, {2, "/a.slice/y"}}, CgroupLabelPolicy{1, {}, {}});
  const auto result = series.Update({{1, 0, 5}, {2, 0, 7}}, {}, {}, *labeler,
                                    std::chrono::steady_clock::now());
  ASSERT_EQ(result.series.size(), 1u);  // <other> only appears once something is in it
  EXPECT_EQ(result.series[0].labels->cgroup, "/a.slice");
  EXPECT_EQ(result.series[0].value, 12u);
}

}  // namespace
}  // namespace kpulse
